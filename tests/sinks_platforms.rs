//! Sinks for third-party platforms: component, authorizer, suite, corp and provider tokens
//! published by the real binary to a real `redis-server`, key by key and byte by byte as
//! `shared/platforms.md` §6 gives each SDK's layout; what a sink selects; the formats that
//! would put a secret into a key name, refused; refresh tokens only with
//! `--include-refresh-tokens`, permanent codes never; and wechatpy 1.8.18's `WeChatComponent`
//! making a business call with what was published, fetching nothing.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::redis_server::{Redis, skip_without};
use support::standin::{self, platform};
use support::{Out, TestEnv, add, run};

const COMPONENT: &str = "wx7c6b5a4f3e2d1c0b";
const COMPONENT_SECRET: &str = "cS5tGh8JkL2mNb4VcX7zQwE1";
const COMPONENT_TICKET: &str = "tk@@@Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf";
const AUTH_1: &str = "wx1111111111111111";
const AUTH_2: &str = "wx2222222222222222";
const REFRESH_1: &str = "rt@@@A1-Qw3Er5Ty7Ui9OpZk";
const REFRESH_2: &str = "rt@@@A2-As2Df4Gh6Jk8LzXm";
const SUITE: &str = "tj5f6a7b8c9d0e1f2a";
const SUITE_SECRET: &str = "sS-Hy7Ju8Ki9Lo0Pm1Nb2Vc3Xz";
const SUITE_TICKET: &str = "sT-Qa1Ws2Ed3Rf4Tg5Yh6Uj7Ik";
const CORP: &str = "wwc0c0c0c0c0c0c0c0";
const PERMANENT_CODE: &str = "pC-Mn8Bv7Cx6Zl5Kj4Hg3Fd2Sa";
const PROVIDER: &str = "wwp0p0p0p0p0p0p0p0";
const PROVIDER_SECRET: &str = "pS-Wq2Er3Ty4Ui5Op6As7Df9G";
const OA: &str = "wx1234567890abcdef";
const OA_SECRET: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// Every secret and durable credential these tests store.
const SECRETS: [&str; 9] = [
    COMPONENT_SECRET,
    COMPONENT_TICKET,
    REFRESH_1,
    REFRESH_2,
    SUITE_SECRET,
    SUITE_TICKET,
    PERMANENT_CODE,
    PROVIDER_SECRET,
    OA_SECRET,
];

// ---- helpers ----

#[track_caller]
fn with_stdin(env: &TestEnv, line: &str, stdin: &str) -> Out {
    let args: Vec<&str> = line.split_whitespace().collect();
    let out = env.run_with_stdin(&args, &format!("{stdin}\n"));
    out.assert_code(0);
    out
}

/// A component with a fresh ticket and two authorizers, and an ordinary Official Account.
fn open_platform(env: &TestEnv) {
    env.api.add_component(COMPONENT, COMPONENT_SECRET);
    env.api.push_component_ticket(COMPONENT, COMPONENT_TICKET);
    with_stdin(
        env,
        &format!("platform add --component {COMPONENT}"),
        COMPONENT_SECRET,
    );
    with_stdin(
        env,
        &format!("platform set-ticket --component {COMPONENT}"),
        COMPONENT_TICKET,
    );
    for (appid, refresh) in [(AUTH_1, REFRESH_1), (AUTH_2, REFRESH_2)] {
        env.api.add_authorizer(COMPONENT, appid, refresh);
        with_stdin(
            env,
            &format!("authorizer import --component {COMPONENT} --appid {appid}"),
            refresh,
        );
    }
    add(env, &format!("--appid {OA}"), OA_SECRET);
}

/// A suite with a fresh ticket and its provider, one corp that installed it, the provider
/// token's account, and an ordinary Official Account.
fn wecom_suite(env: &TestEnv) {
    env.api.add_suite(SUITE, SUITE_SECRET);
    env.api.push_suite_ticket(SUITE, SUITE_TICKET);
    env.api.add_provider(PROVIDER, PROVIDER_SECRET);
    with_stdin(
        env,
        &format!("platform add --suite {SUITE} --provider-corpid {PROVIDER}"),
        SUITE_SECRET,
    );
    with_stdin(
        env,
        &format!("platform set-ticket --suite {SUITE}"),
        SUITE_TICKET,
    );
    env.api.add_corp(SUITE, CORP, PERMANENT_CODE);
    with_stdin(
        env,
        &format!("authorizer import --suite {SUITE} --corpid {CORP}"),
        PERMANENT_CODE,
    );
    with_stdin(
        env,
        &format!("account add --provider-corpid {PROVIDER}"),
        PROVIDER_SECRET,
    );
    add(env, &format!("--appid {OA}"), OA_SECRET);
}

/// `sink add NAME --redis URL --format FORMAT EXTRA...`, with its exit code.
#[track_caller]
fn add_sink(env: &TestEnv, redis: &Redis, db: u8, format: &str, extra: &str, code: i32) -> Out {
    let line = format!(
        "sink add s{db} --redis {} --format {format} {extra}",
        redis.url(db)
    );
    let out = run(env, &line, code);
    support::assert_no_secret("sink add", &out, &SECRETS);
    out
}

#[track_caller]
fn refresh(env: &TestEnv) {
    let out = run(env, "refresh", 0);
    support::assert_no_secret("refresh", &out, &SECRETS);
}

#[track_caller]
fn get(env: &TestEnv, args: &str) -> String {
    run(env, &format!("get {args}"), 0)
        .stdout
        .trim()
        .to_string()
}

fn component_token(env: &TestEnv) -> String {
    get(env, &format!("--component {COMPONENT}"))
}

fn authorizer_token(env: &TestEnv, appid: &str) -> String {
    get(env, &format!("--component {COMPONENT} --appid {appid}"))
}

/// Seconds the token of `get ARGS --json` has left.
fn ttl_of(env: &TestEnv, args: &str) -> i64 {
    let doc: Value = support::json(&run(env, &format!("get {args} --json"), 0).stdout);
    doc["expires_in"]
        .as_i64()
        .unwrap_or_else(|| panic!("no expires_in in {doc}"))
}

/// `key`'s value in `db`, and that its TTL is the time the token of `get ARGS` has left
/// (never more, at most a minute less).
#[track_caller]
fn token_key(redis: &Redis, db: u8, key: &str, env: &TestEnv, args: &str) -> String {
    let value = redis
        .get(db, key)
        .unwrap_or_else(|| panic!("{key} missing; keys: {:?}", redis.keys(db)));
    let ttl = redis.ttl(db, key);
    // Read after the TTL: `left` may be a second shorter (a second boundary in between).
    let left = ttl_of(env, args);
    assert!(
        ttl <= left + 1 && ttl > left - 60,
        "{key}: TTL {ttl}, the token has {left}s left"
    );
    value
}

/// `key`'s value in `db`, which must have no TTL.
#[track_caller]
fn persistent_key(redis: &Redis, db: u8, key: &str) -> String {
    let value = redis
        .get(db, key)
        .unwrap_or_else(|| panic!("{key} missing; keys: {:?}", redis.keys(db)));
    assert_eq!(redis.ttl(db, key), -1, "{key} has no TTL");
    value
}

/// Every key and value of `db`, for searching.
fn dump(redis: &Redis, db: u8) -> String {
    redis
        .keys(db)
        .into_iter()
        .map(|k| {
            let v = redis.get(db, &k).unwrap_or_default();
            format!("{k} = {v}\n")
        })
        .collect()
}

fn quoted(token: &str) -> String {
    format!("\"{token}\"")
}

fn sorted(keys: &[String]) -> Vec<String> {
    let mut keys = keys.to_vec();
    keys.sort();
    keys
}

// ---- Open Platform formats ----

/// WxJava weixin-java-open `WxOpenInRedisConfigStorage`: plain values, tokens with their
/// time left, refresh tokens without a TTL (only with the flag), no keyPrefix by default.
fn wxjava_open_keys_values_and_ttls() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    open_platform(&env);
    add_sink(
        &env,
        &redis,
        0,
        "wxjava",
        &format!("--component {COMPONENT} --include-refresh-tokens"),
        0,
    );
    add_sink(
        &env,
        &redis,
        1,
        "wxjava",
        &format!("--component {COMPONENT} --prefix wxopen"),
        0,
    );
    refresh(&env);

    let c = format!("--component {COMPONENT}");
    let keys = vec![
        format!("wechat_authorizer_access_token:{COMPONENT}:{AUTH_1}"),
        format!("wechat_authorizer_access_token:{COMPONENT}:{AUTH_2}"),
        format!("wechat_authorizer_refresh_token:{COMPONENT}:{AUTH_1}"),
        format!("wechat_authorizer_refresh_token:{COMPONENT}:{AUTH_2}"),
        format!("wechat_component_access_token:{COMPONENT}"),
    ];
    assert_eq!(
        redis.keys(0),
        sorted(&keys),
        "exactly these keys, the OA's not among them"
    );
    assert_eq!(
        token_key(&redis, 0, &keys[4], &env, &c),
        component_token(&env)
    );
    for (i, (appid, refresh)) in [(AUTH_1, REFRESH_1), (AUTH_2, REFRESH_2)]
        .into_iter()
        .enumerate()
    {
        let args = format!("{c} --appid {appid}");
        assert_eq!(
            token_key(&redis, 0, &keys[i], &env, &args),
            authorizer_token(&env, appid)
        );
        assert_eq!(persistent_key(&redis, 0, &keys[2 + i]), refresh);
    }
    // With a keyPrefix: `prefix:` before each key; no refresh token without the flag.
    assert_eq!(
        redis.keys(1),
        sorted(&[
            format!("wxopen:wechat_authorizer_access_token:{COMPONENT}:{AUTH_1}"),
            format!("wxopen:wechat_authorizer_access_token:{COMPONENT}:{AUTH_2}"),
            format!("wxopen:wechat_component_access_token:{COMPONENT}"),
        ])
    );
}

/// wechatpy 1.8.18 `WeChatComponent` + `RedisStorage`: JSON-quoted values under
/// `wechatpy:`; `component_access_token` has no component appid; `{appid}_refresh_token`
/// without a TTL, only with the flag; never the component_verify_ticket.
fn wechatpy_component_keys() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    open_platform(&env);
    let c = format!("--component {COMPONENT}");
    add_sink(
        &env,
        &redis,
        0,
        "wechatpy",
        &format!("{c} --include-refresh-tokens"),
        0,
    );
    add_sink(&env, &redis, 1, "wechatpy", &c, 0);
    refresh(&env);

    let mut keys = vec![
        "wechatpy:component_access_token".to_string(),
        format!("wechatpy:{AUTH_1}_access_token"),
        format!("wechatpy:{AUTH_2}_access_token"),
        format!("wechatpy:{AUTH_1}_refresh_token"),
        format!("wechatpy:{AUTH_2}_refresh_token"),
    ];
    assert_eq!(redis.keys(0), sorted(&keys));
    assert_eq!(
        token_key(&redis, 0, &keys[0], &env, &c),
        quoted(&component_token(&env))
    );
    for (i, (appid, refresh)) in [(AUTH_1, REFRESH_1), (AUTH_2, REFRESH_2)]
        .into_iter()
        .enumerate()
    {
        let args = format!("{c} --appid {appid}");
        assert_eq!(
            token_key(&redis, 0, &keys[1 + i], &env, &args),
            quoted(&authorizer_token(&env, appid))
        );
        assert_eq!(persistent_key(&redis, 0, &keys[3 + i]), quoted(refresh));
    }
    keys.truncate(3);
    assert_eq!(
        redis.keys(1),
        sorted(&keys),
        "no refresh token without the flag"
    );
    for db in [0, 1] {
        assert!(!dump(&redis, db).contains(COMPONENT_TICKET));
    }
}

/// silenceper/wechat `openplatform`: `component_access_token_{cid}` and
/// `authorizer_access_token_{appid}`, plain values.
fn silenceper_component_keys() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    open_platform(&env);
    let c = format!("--component {COMPONENT}");
    add_sink(&env, &redis, 0, "silenceper", &c, 0);
    refresh(&env);
    let keys = vec![
        format!("authorizer_access_token_{AUTH_1}"),
        format!("authorizer_access_token_{AUTH_2}"),
        format!("component_access_token_{COMPONENT}"),
    ];
    assert_eq!(redis.keys(0), sorted(&keys));
    assert_eq!(
        token_key(&redis, 0, &keys[2], &env, &c),
        component_token(&env)
    );
    assert_eq!(
        token_key(&redis, 0, &keys[0], &env, &format!("{c} --appid {AUTH_1}")),
        authorizer_token(&env, AUTH_1)
    );
    // silenceper never reads a refresh token: the flag is refused, with the reason.
    add_sink(
        &env,
        &redis,
        1,
        "silenceper",
        &format!("{c} --include-refresh-tokens"),
        2,
    )
    .assert_stderr_has(&["does not read refresh tokens"]);
}

/// EasyWeChat 6 `open_platform`: the component token in the store's namespace, PHP
/// `serialize()`d; the authorizer key would hold md5(refresh token), so authorizer tokens
/// are refused (a note at `sink add`, nothing in Redis).
fn easywechat_component_token_only() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    open_platform(&env);
    let c = format!("--component {COMPONENT}");
    let out = add_sink(&env, &redis, 0, "easywechat", &c, 0);
    out.assert_stderr_has(&["does not publish authorizer tokens", "md5", "refresh token"]);
    refresh(&env);
    let key = format!("easywechat:open_platform.component_access_token.{COMPONENT}");
    assert_eq!(redis.keys(0), vec![key.clone()]);
    let token = component_token(&env);
    assert_eq!(
        token_key(&redis, 0, &key, &env, &c),
        format!("s:{}:\"{token}\";", token.len())
    );
}

/// PowerWeChat names every platform and tenant key with an md5 of a secret: refused.
fn powerwechat_is_refused_for_platforms() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    open_platform(&env);
    let out = add_sink(
        &env,
        &redis,
        0,
        "powerwechat",
        &format!("--component {COMPONENT}"),
        2,
    );
    out.assert_stderr_has(&[
        "would publish none",
        "md5",
        "component tokens",
        "authorizer tokens",
    ]);
    assert!(
        run(&env, "sink list", 0).stdout.trim().is_empty(),
        "no sink added"
    );
}

// ---- WeCom suites ----

/// WxJava weixin-java-cp `WxCpTpRedissonConfigImpl`: `{p}:{suiteId}::suiteAccessTokenKey:`,
/// `{p}:{suiteId}:{corpId}:accessTokenKey:`, `{p}:{providerCorpId}::providerTokenKey:`,
/// the keyPrefix empty by default (keys begin with ':'); plain values.
fn wxjava_tp_keys() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    wecom_suite(&env);
    add_sink(&env, &redis, 0, "wxjava", &format!("--suite {SUITE}"), 0);
    add_sink(
        &env,
        &redis,
        1,
        "wxjava",
        &format!("--suite {SUITE} --prefix tp"),
        0,
    );
    refresh(&env);
    let s = format!("--suite {SUITE}");
    let keys = [
        format!(":{PROVIDER}::providerTokenKey:"),
        format!(":{SUITE}:{CORP}:accessTokenKey:"),
        format!(":{SUITE}::suiteAccessTokenKey:"),
    ];
    assert_eq!(redis.keys(0), sorted(&keys), "the OA's key not among them");
    assert_eq!(token_key(&redis, 0, &keys[2], &env, &s), get(&env, &s));
    let corp = format!("{s} --corpid {CORP}");
    assert_eq!(
        token_key(&redis, 0, &keys[1], &env, &corp),
        get(&env, &corp)
    );
    let provider = format!("--provider-corpid {PROVIDER}");
    assert_eq!(
        token_key(&redis, 0, &keys[0], &env, &provider),
        get(&env, &provider)
    );
    let prefixed: Vec<String> = keys.iter().map(|k| format!("tp{k}")).collect();
    assert_eq!(redis.keys(1), sorted(&prefixed));
    for db in [0, 1] {
        let all = dump(&redis, db);
        for secret in [PERMANENT_CODE, SUITE_SECRET, SUITE_TICKET, PROVIDER_SECRET] {
            assert!(!all.contains(secret), "{secret} published in db {db}");
        }
    }
}

/// Formats whose suite, corp and provider keys hold the secret or the permanent code
/// (EasyWeChat 6 open_work, PowerWeChat), or that have no suite storage (wechatpy,
/// silenceper), are refused with the reason; so are refresh tokens for a suite.
fn suite_formats_that_would_leak_are_refused() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    wecom_suite(&env);
    let s = format!("--suite {SUITE}");
    add_sink(&env, &redis, 0, "easywechat", &s, 2).assert_stderr_has(&[
        "would publish none",
        "suite_secret",
        "permanent_code",
        "provider_secret",
    ]);
    add_sink(&env, &redis, 0, "powerwechat", &s, 2).assert_stderr_has(&["md5"]);
    add_sink(&env, &redis, 0, "wechatpy", &s, 2).assert_stderr_has(&["no storage"]);
    add_sink(&env, &redis, 0, "silenceper", &s, 2).assert_stderr_has(&["no WeCom suite"]);
    add_sink(
        &env,
        &redis,
        0,
        "wxjava",
        &format!("{s} --include-refresh-tokens"),
        2,
    )
    .assert_stderr_has(&["permanent codes are never published"]);
    assert!(
        run(&env, "sink list", 0).stdout.trim().is_empty(),
        "no sink added"
    );
    refresh(&env);
    assert!(redis.keys(0).is_empty());
}

// ---- plain and json ----

/// Templates name `{component}` and `{suite}`; the platform tokens have their own `{kind}`;
/// a refresh token goes under `{kind}` = refresh_token, without a TTL; `{agentid}` is empty
/// for tenants.
fn templates_name_the_platform() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    open_platform(&env);
    wecom_suite_without_oa(&env);
    let c = format!("--component {COMPONENT}");
    add_sink(
        &env,
        &redis,
        0,
        "json",
        &format!("{c} --key op:{{component}}:{{appid}}:{{kind}} --include-refresh-tokens"),
        0,
    );
    add_sink(
        &env,
        &redis,
        1,
        "plain",
        &format!("--suite {SUITE} --key wc:{{suite}}:{{appid}}{{agentid}}:{{kind}}"),
        0,
    );
    // Without {kind}, a refresh token would overwrite the access token: refused.
    add_sink(
        &env,
        &redis,
        2,
        "plain",
        &format!("{c} --key op:{{appid}} --include-refresh-tokens"),
        2,
    )
    .assert_stderr_has(&["needs {kind}"]);
    refresh(&env);

    assert_eq!(
        redis.keys(0),
        sorted(&[
            format!("op:{COMPONENT}:{AUTH_1}:access_token"),
            format!("op:{COMPONENT}:{AUTH_1}:refresh_token"),
            format!("op:{COMPONENT}:{AUTH_2}:access_token"),
            format!("op:{COMPONENT}:{AUTH_2}:refresh_token"),
            format!("op:{COMPONENT}:{COMPONENT}:component_access_token"),
        ])
    );
    let key = format!("op:{COMPONENT}:{COMPONENT}:component_access_token");
    let doc: Value = serde_json::from_str(&token_key(&redis, 0, &key, &env, &c)).unwrap();
    assert_eq!(doc["access_token"], component_token(&env).as_str());
    let key = format!("op:{COMPONENT}:{AUTH_1}:refresh_token");
    let doc: Value = serde_json::from_str(&persistent_key(&redis, 0, &key)).unwrap();
    assert_eq!(doc, serde_json::json!({ "refresh_token": REFRESH_1 }));

    let s = format!("--suite {SUITE}");
    let keys = vec![
        format!("wc:{SUITE}:{CORP}:access_token"),
        format!("wc:{SUITE}:{SUITE}:suite_access_token"),
        format!("wc::{PROVIDER}:provider_access_token"),
    ];
    assert_eq!(redis.keys(1), sorted(&keys));
    assert_eq!(token_key(&redis, 1, &keys[1], &env, &s), get(&env, &s));
    let corp = format!("{s} --corpid {CORP}");
    assert_eq!(
        token_key(&redis, 1, &keys[0], &env, &corp),
        get(&env, &corp)
    );
    assert!(!dump(&redis, 1).contains(PERMANENT_CODE));
}

/// `wecom_suite` without its Official Account (for a store that has one already).
fn wecom_suite_without_oa(env: &TestEnv) {
    env.api.add_suite(SUITE, SUITE_SECRET);
    env.api.push_suite_ticket(SUITE, SUITE_TICKET);
    env.api.add_provider(PROVIDER, PROVIDER_SECRET);
    with_stdin(
        env,
        &format!("platform add --suite {SUITE} --provider-corpid {PROVIDER}"),
        SUITE_SECRET,
    );
    with_stdin(
        env,
        &format!("platform set-ticket --suite {SUITE}"),
        SUITE_TICKET,
    );
    env.api.add_corp(SUITE, CORP, PERMANENT_CODE);
    with_stdin(
        env,
        &format!("authorizer import --suite {SUITE} --corpid {CORP}"),
        PERMANENT_CODE,
    );
    with_stdin(
        env,
        &format!("account add --provider-corpid {PROVIDER}"),
        PROVIDER_SECRET,
    );
}

// ---- selection and refresh tokens ----

/// A sink with no selector publishes the ordinary accounts only (what it did before
/// platforms existed); `--appid` of one authorizer publishes that authorizer only;
/// `--component` publishes nothing of the suite, and `--suite` nothing of the component.
fn what_a_sink_selects() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    open_platform(&env);
    wecom_suite_without_oa(&env);
    let key = "--key t:{appid}:{kind}";
    add_sink(&env, &redis, 0, "plain", key, 0);
    add_sink(
        &env,
        &redis,
        1,
        "plain",
        &format!("{key} --appid {AUTH_2}/{COMPONENT}"),
        0,
    );
    add_sink(
        &env,
        &redis,
        2,
        "plain",
        &format!("{key} --component {COMPONENT}"),
        0,
    );
    add_sink(
        &env,
        &redis,
        3,
        "plain",
        &format!("{key} --suite {SUITE}"),
        0,
    );
    refresh(&env);
    // The provider is an ordinary account kind: in the default selection too.
    assert_eq!(
        redis.keys(0),
        sorted(&[
            format!("t:{OA}:access_token"),
            format!("t:{PROVIDER}:provider_access_token"),
        ])
    );
    assert_eq!(redis.keys(1), vec![format!("t:{AUTH_2}:access_token")]);
    assert_eq!(
        redis.keys(2),
        sorted(&[
            format!("t:{AUTH_1}:access_token"),
            format!("t:{AUTH_2}:access_token"),
            format!("t:{COMPONENT}:component_access_token"),
        ])
    );
    assert_eq!(
        redis.keys(3),
        sorted(&[
            format!("t:{SUITE}:suite_access_token"),
            format!("t:{CORP}:access_token"),
            format!("t:{PROVIDER}:provider_access_token"),
        ])
    );
    // `sink list --json` shows the selectors.
    let doc = support::json(&run(&env, "sink list --json", 0).stdout);
    assert_eq!(
        doc["sinks"][2]["accounts"],
        serde_json::json!([format!("component:{COMPONENT}")])
    );
    // An unknown platform is refused.
    add_sink(
        &env,
        &redis,
        4,
        "wxjava",
        "--component wxffffffffffffffff",
        6,
    )
    .assert_stderr_has(&["no such component"]);
}

/// Refresh tokens are published only by a sink added with the flag: none of the sinks
/// without it, whatever the format, holds one; `sink test` names the key, never the value;
/// permanent codes are never published, not even with the flag.
fn refresh_tokens_only_with_the_flag() {
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    open_platform(&env);
    wecom_suite_without_oa(&env);
    let c = format!("--component {COMPONENT}");
    let s = format!("--suite {SUITE}");
    add_sink(&env, &redis, 0, "wxjava", &c, 0);
    add_sink(&env, &redis, 1, "wechatpy", &c, 0);
    add_sink(
        &env,
        &redis,
        2,
        "json",
        &format!("{c} {s} --key k:{{appid}}:{{kind}}"),
        0,
    );
    add_sink(&env, &redis, 3, "silenceper", &c, 0);
    add_sink(&env, &redis, 4, "easywechat", &c, 0);
    add_sink(
        &env,
        &redis,
        5,
        "wxjava",
        &format!("{c} {s} --include-refresh-tokens"),
        0,
    );
    refresh(&env);
    for db in 0..5 {
        let all = dump(&redis, db);
        assert!(!all.is_empty(), "db {db} has the tokens");
        for secret in SECRETS {
            assert!(!all.contains(secret), "db {db} holds a secret:\n{all}");
        }
    }
    let all = dump(&redis, 5);
    assert!(all.contains(REFRESH_1) && all.contains(REFRESH_2));
    for secret in SECRETS
        .iter()
        .filter(|s| ![REFRESH_1, REFRESH_2].contains(s))
    {
        assert!(!all.contains(secret), "db 5 holds {secret}:\n{all}");
    }
    let out = run(&env, "sink test s5", 0);
    support::assert_no_secret("sink test", &out, &SECRETS);
    support::assert_has(
        &out.stdout,
        &[&format!(
            "wechat_authorizer_refresh_token:{COMPONENT}:{AUTH_1}  ok, no expiry"
        )],
    );
}

also_on_postgres!(
    wxjava_open_keys_values_and_ttls,
    wechatpy_component_keys,
    wxjava_tp_keys,
    what_a_sink_selects,
    refresh_tokens_only_with_the_flag,
);

#[test]
fn wxjava_open() {
    wxjava_open_keys_values_and_ttls();
}

#[test]
fn wechatpy_open() {
    wechatpy_component_keys();
}

#[test]
fn silenceper_open() {
    silenceper_component_keys();
}

#[test]
fn easywechat_open() {
    easywechat_component_token_only();
}

#[test]
fn powerwechat_open_refused() {
    powerwechat_is_refused_for_platforms();
}

#[test]
fn wxjava_tp() {
    wxjava_tp_keys();
}

#[test]
fn suite_formats_refused() {
    suite_formats_that_would_leak_are_refused();
}

#[test]
fn templates() {
    templates_name_the_platform();
}

#[test]
fn selection() {
    what_a_sink_selects();
}

#[test]
fn refresh_tokens() {
    refresh_tokens_only_with_the_flag();
}

// ---- proof with wechatpy 1.8.18 ----

/// Where .ci/run installs the SDKs: `WXTOKEN_SDK_DIR`, else `<target>/sdk`.
fn sdk_dir() -> PathBuf {
    match std::env::var_os("WXTOKEN_SDK_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target dir")
            .join("sdk"),
    }
}

fn wechatpy(env: &TestEnv, redis: &Redis, db: u8, mode: &str) -> Value {
    let python = sdk_dir().join("venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/wechatpy_component.py");
    let out = Command::new(python)
        .arg(script)
        .args([
            env.url(),
            redis.port.to_string(),
            db.to_string(),
            COMPONENT.into(),
            AUTH_1.into(),
            mode.into(),
        ])
        .env_clear()
        .env("COMPONENT_SECRET", COMPONENT_SECRET)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .expect("run wechatpy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "wechatpy failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The platform token fetches the stand-in has seen, from anyone.
fn platform_fetches(env: &TestEnv) -> (usize, usize) {
    (
        env.api.hits(platform::COMPONENT_TOKEN),
        env.api.hits(platform::AUTHORIZER_TOKEN),
    )
}

/// wechatpy's `WeChatComponent` on a `RedisStorage` that a wechatpy sink filled: with
/// `--include-refresh-tokens`, `get_client_by_appid` (which asserts the refresh token is in
/// the session) gives a client whose business call succeeds on the stand-in; without the
/// flag it fails that assert, and the adapter of the guide (`WeChatComponentClient` built
/// directly) works instead. wechatpy sends no api_component_token and no
/// api_authorizer_token request either way.
#[test]
fn wechatpy_component_makes_a_business_call_without_fetching() {
    let python = sdk_dir().join("venv/bin/python");
    if skip_without("the wechatpy venv (<target>/sdk/venv)", python.is_file()) {
        return;
    }
    let env = TestEnv::new();
    let Some(redis) = Redis::start(&env.dir, &[]) else {
        return;
    };
    open_platform(&env);
    let c = format!("--component {COMPONENT}");
    add_sink(
        &env,
        &redis,
        0,
        "wechatpy",
        &format!("{c} --include-refresh-tokens"),
        0,
    );
    add_sink(&env, &redis, 1, "wechatpy", &c, 0);
    refresh(&env);
    let before = platform_fetches(&env);
    let menus = env.api.hits(standin::MENU_GET);

    let got = wechatpy(&env, &redis, 0, "by_appid");
    assert_eq!(got["assert"], false, "{got}");
    assert_eq!(got["component_token"], component_token(&env).as_str());
    assert_eq!(
        got["authorizer_token"],
        authorizer_token(&env, AUTH_1).as_str()
    );
    assert_eq!(
        got["menu"]["errcode"], 0,
        "the business call succeeded: {got}"
    );

    let without = wechatpy(&env, &redis, 1, "by_appid");
    assert_eq!(
        without["assert"], true,
        "get_client_by_appid needs the refresh token"
    );
    let direct = wechatpy(&env, &redis, 1, "direct");
    assert_eq!(
        direct["authorizer_token"],
        authorizer_token(&env, AUTH_1).as_str()
    );
    assert_eq!(direct["menu"]["errcode"], 0, "{direct}");

    assert_eq!(
        platform_fetches(&env),
        before,
        "wechatpy fetched no component or authorizer token"
    );
    assert_eq!(env.api.hits(standin::MENU_GET), menus + 2);
    // wechatpy wrote nothing over what wxtoken published.
    assert_eq!(
        redis.get(0, &format!("wechatpy:{AUTH_1}_access_token")),
        Some(quoted(&authorizer_token(&env, AUTH_1)))
    );
}
