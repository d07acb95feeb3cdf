//! Sinks: the real binary publishing to a real `redis-server` (and to hooks), checked key by
//! key and byte by byte against each SDK's own rule (`shared/sdk-storage.md`, quoted in
//! `docs/integrations/`).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::redis_server::Redis;
use support::standin::{self, Reply};
use support::{Out, TestEnv, add, run};

const OA: &str = "wx1234567890abcdef";
const OA_SECRET: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// md5(OA + OA_SECRET), as `md5sum` prints it: PowerWeChat's key.
const OA_MD5: &str = "d67cbfcf6ce0bff0b0f21a186077f92a";
const MP: &str = "wx00000000000000aa";
const MP_SECRET: &str = "ffeeddccbbaa99887766554433221100";
const CORP: &str = "ww7a3c5e9b1d2f4a6c";
const APP: &str = "ww7a3c5e9b1d2f4a6c/1000002";
const APP_SECRET: &str = "AppSecret1000002-q8Zr4LmW2xTn7VbKc9PdYs3Hf";
/// md5(CORP + APP_SECRET).
const APP_MD5: &str = "a890e84a8e71b9dab7d2b905c73317d4";
const REDIS_PASSWORD: &str = "r3dis-Pa55word-7Kq";

// ---- helpers ----

/// An Official Account (classic token, jsapi and wx_card tickets), a Mini Program (stable
/// token) and a WeCom app (jsapi and agent_config tickets).
fn with_accounts() -> TestEnv {
    let env = TestEnv::new();
    let oa = format!("--appid {OA} --ticket jsapi --ticket wx_card");
    add(&env, &oa, OA_SECRET);
    add(&env, &format!("--appid {MP} --api stable"), MP_SECRET);
    let app = format!("--corpid {CORP} --agentid 1000002 --ticket jsapi --ticket agent_config");
    add(&env, &app, APP_SECRET);
    env
}

fn start_redis(env: &TestEnv) -> Option<Redis> {
    Redis::start(&env.dir, &[])
}

/// `sink add NAME --redis URL --format FORMAT EXTRA...`; must succeed.
#[track_caller]
fn add_sink(env: &TestEnv, name: &str, url: &str, format: &str, extra: &[&str]) {
    let mut args = vec!["sink", "add", name, "--redis", url, "--format", format];
    args.extend_from_slice(extra);
    run(env, &args, 0);
}

/// The stored value and expiry of an account's newest row of `kind`.
struct Row {
    value: String,
    expires_at: i64,
}

#[track_caller]
fn row(env: &TestEnv, who: &str, kind: &str) -> Row {
    let (appid, agent) = who.split_once('/').unwrap_or((who, ""));
    // The appids, agents and kinds are this file's constants: no quoting needed.
    let line = env.query(&format!(
        "SELECT t.expires_at, t.token FROM tokens t JOIN accounts a ON a.id = t.account_id
         WHERE a.appid = '{appid}' AND a.agent = '{agent}' AND t.kind = '{kind}'
         ORDER BY t.id DESC LIMIT 1"
    ));
    let (expires_at, value) = line
        .split_once('|')
        .unwrap_or_else(|| panic!("no {kind} row for {who}: {line:?}"));
    Row {
        value: value.to_string(),
        expires_at: expires_at.parse().expect("expires_at is a number"),
    }
}

/// Checks that database `db` holds exactly `expected` (key, value) pairs, each with a TTL of
/// at most the time its token has left and no less than a minute under it.
#[track_caller]
fn assert_published(redis: &Redis, db: u8, expected: &[(String, String, i64)]) {
    let mut keys: Vec<&str> = expected.iter().map(|(k, _, _)| k.as_str()).collect();
    keys.sort();
    assert_eq!(redis.keys(db), keys, "the keys in db {db}");
    let now = unix_now();
    for (key, value, expires_at) in expected {
        assert_eq!(
            redis.get(db, key).as_deref(),
            Some(value.as_str()),
            "the value of {key}"
        );
        let ttl = redis.ttl(db, key);
        let left = expires_at - now;
        assert!(
            ttl <= left + 1 && ttl > left - 60,
            "TTL of {key} is {ttl}, the token has {left}s left"
        );
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One entry: key, value, and the expiry the TTL must match.
fn e(key: impl Into<String>, value: impl Into<String>, r: &Row) -> (String, String, i64) {
    (key.into(), value.into(), r.expires_at)
}

struct Rows {
    oa: Row,
    oa_jsapi: Row,
    oa_card: Row,
    mp: Row,
    app: Row,
    app_jsapi: Row,
    app_agent: Row,
}

fn rows(env: &TestEnv) -> Rows {
    Rows {
        oa: row(env, OA, "access_token"),
        oa_jsapi: row(env, OA, "jsapi"),
        oa_card: row(env, OA, "wx_card"),
        mp: row(env, MP, "access_token"),
        app: row(env, APP, "access_token"),
        app_jsapi: row(env, APP, "jsapi"),
        app_agent: row(env, APP, "agent_config"),
    }
}

/// Publishes every account to a sink of `format` on database 1 (plus `extra` arguments) and
/// returns what was stored.
fn published(format: &str, extra: &[&str]) -> Option<(TestEnv, Redis, Rows)> {
    let env = with_accounts();
    let redis = start_redis(&env)?;
    add_sink(&env, "s", &redis.url(1), format, extra);
    run(&env, &["refresh"], 0);
    let rows = rows(&env);
    Some((env, redis, rows))
}

// ---- each SDK's format, byte for byte ----

#[test]
fn wxjava_keys_and_plain_values() {
    let Some((_env, redis, r)) = published("wxjava", &[]) else {
        return;
    };
    assert_published(
        &redis,
        1,
        &[
            // WxMpRedisConfigImpl: "%s:access_token:%s", TICKET_KEY_TPL "%s:ticket:key:%s:%s".
            e(format!("wx:access_token:{OA}"), &r.oa.value, &r.oa),
            e(
                format!("wx:ticket:key:{OA}:jsapi"),
                &r.oa_jsapi.value,
                &r.oa_jsapi,
            ),
            e(
                format!("wx:ticket:key:{OA}:wx_card"),
                &r.oa_card.value,
                &r.oa_card,
            ),
            e(format!("wx:access_token:{MP}"), &r.mp.value, &r.mp),
            // AbstractWxCpInRedisConfigImpl: prefix "wx:cp", ukey corpId:agentId.
            e(
                format!("wx:cp:wechat_cp_access_token_key:{CORP}:1000002"),
                &r.app.value,
                &r.app,
            ),
            e(
                format!("wx:cp:wechat_cp_jsapi_ticket_key:{CORP}:1000002"),
                &r.app_jsapi.value,
                &r.app_jsapi,
            ),
            e(
                format!("wx:cp:wechat_cp_agent_jsapi_ticket_key:{CORP}:1000002"),
                &r.app_agent.value,
                &r.app_agent,
            ),
        ],
    );
}

#[test]
fn wxjava_prefix_is_configurable() {
    let Some((_env, redis, r)) = published("wxjava", &["--prefix", "wa", "--appid", MP]) else {
        return;
    };
    assert_published(
        &redis,
        1,
        &[e(format!("wa:access_token:{MP}"), &r.mp.value, &r.mp)],
    );
}

#[test]
fn silenceper_keys_with_the_double_underscore() {
    let Some((_env, redis, r)) = published("silenceper", &[]) else {
        return;
    };
    assert_published(
        &redis,
        1,
        &[
            e(
                format!("gowechat_officialaccount__access_token_{OA}"),
                &r.oa.value,
                &r.oa,
            ),
            e(
                format!("gowechat_officialaccount__jsapi_ticket_{OA}"),
                &r.oa_jsapi.value,
                &r.oa_jsapi,
            ),
            e(
                format!("gowechat_officialaccount__access_token_{MP}"),
                &r.mp.value,
                &r.mp,
            ),
            e(
                format!("gowechat_work__access_token_{CORP}_1000002"),
                &r.app.value,
                &r.app,
            ),
            e(
                format!("gowechat_work__corp_jsapi_ticket_{CORP}"),
                &r.app_jsapi.value,
                &r.app_jsapi,
            ),
            e(
                format!("gowechat_work__agent_jsapi_ticket_{CORP}_1000002"),
                &r.app_agent.value,
                &r.app_agent,
            ),
        ],
    );
}

/// What EasyWeChat 6 reads, in the cache namespace `ns` (with its `:`): keys from
/// `sprintf('%s.access_token.%s.%s.%s', prefix, appId, secret, (int) stable)` and friends,
/// values from PHP `serialize()` of a string.
fn easywechat_expected(ns: &str, r: &Rows) -> Vec<(String, String, i64)> {
    let ser = |row: &Row| format!("s:{}:\"{}\";", row.value.len(), row.value);
    [
        (
            format!("official_account.access_token.{OA}.{OA_SECRET}.0"),
            &r.oa,
        ),
        (format!("official_account.jsapi_ticket.{OA}"), &r.oa_jsapi),
        (
            format!("official_account.access_token.{MP}.{MP_SECRET}.1"),
            &r.mp,
        ),
        (format!("work.access_token.{CORP}.{APP_SECRET}"), &r.app),
        (format!("work.jsapi_ticket.{CORP}"), &r.app_jsapi),
        (format!("work.jsapi_ticket.{CORP}.1000002"), &r.app_agent),
    ]
    .into_iter()
    .map(|(key, row)| e(format!("{ns}{key}"), ser(row), row))
    .collect()
}

#[test]
fn easywechat_keys_embed_the_secret_and_values_are_php_serialized() {
    let Some((env, redis, r)) = published("easywechat", &[]) else {
        return;
    };
    assert_published(&redis, 1, &easywechat_expected("easywechat:", &r));
    // Those keys are secrets: `sink test` describes them without printing them, and no
    // log level shows them.
    let out = run(&env, &["sink", "test", "s"], 0);
    let verbose = run(&env, &["-vvv", "refresh", "--force"], 0);
    for text in [&out.stdout, &out.stderr, &verbose.stdout, &verbose.stderr] {
        assert!(
            !text.contains(OA_SECRET) && !text.contains(APP_SECRET),
            "{text}"
        );
    }
    assert!(out.stdout.contains(&format!(
        "<key of {OA} access_token: embeds the secret, not shown>"
    )));
    assert!(out.stdout.contains(&format!(
        "easywechat:official_account.jsapi_ticket.{OA}  ok"
    )));
}

#[test]
fn easywechat_without_a_namespace() {
    let Some((_env, redis, r)) = published("easywechat", &["--prefix", "", "--appid", OA]) else {
        return;
    };
    let mut expected = easywechat_expected("", &r);
    expected.retain(|(key, _, _)| key.contains(OA));
    assert_published(&redis, 1, &expected);
}

#[test]
fn wechatpy_json_values_and_expires_at_keys() {
    let Some((_env, redis, r)) = published("wechatpy", &[]) else {
        return;
    };
    let head = &APP_SECRET[..10];
    // RedisStorage: "{prefix}:{key}", json.dumps(value); each value with the
    // "..._expires_at" key (a JSON integer) that the SDK's readers check.
    let pair = |key: String, expires_key: String, row: &Row| {
        [
            e(format!("wechatpy:{key}"), format!("\"{}\"", row.value), row),
            e(
                format!("wechatpy:{expires_key}_expires_at"),
                row.expires_at.to_string(),
                row,
            ),
        ]
    };
    let expected = [
        pair(
            format!("{OA}_access_token"),
            format!("{OA}_access_token"),
            &r.oa,
        ),
        pair(
            format!("{OA}_jsapi_ticket"),
            format!("{OA}_jsapi_ticket"),
            &r.oa_jsapi,
        ),
        pair(
            format!("{MP}_access_token"),
            format!("{MP}_access_token"),
            &r.mp,
        ),
        // WeCom: "{corp_id}_{secret[:10]}_access_token", expiry under the corp id.
        pair(
            format!("{CORP}_{head}_access_token"),
            format!("{CORP}_access_token"),
            &r.app,
        ),
        pair(
            format!("{CORP}_jsapi_ticket"),
            format!("{CORP}_jsapi_ticket"),
            &r.app_jsapi,
        ),
        pair(
            format!("{CORP}_agent_jsapi_ticket"),
            format!("{CORP}_agent_jsapi_ticket"),
            &r.app_agent,
        ),
    ];
    assert_published(&redis, 1, &expected.concat());
}

#[test]
fn powerwechat_md5_keys_and_json_objects_with_a_numeric_expires_in() {
    let Some((env, redis, r)) = published("powerwechat", &["--appid", OA, "--appid", APP]) else {
        return;
    };
    // The keys are derived from the secret: never shown.
    let out = run(&env, &["-vvv", "sink", "test", "s"], 0);
    assert!(
        !out.stdout.contains(OA_MD5) && !out.stderr.contains(OA_MD5),
        "{out:?}"
    );
    let now = unix_now();
    for (key, row) in [
        (format!("powerwechat.access_token.{OA_MD5}"), &r.oa),
        (format!("powerwechat.access_token.{APP_MD5}"), &r.app),
    ] {
        let value: Value = serde_json::from_str(&redis.get(1, &key).expect(&key)).unwrap();
        assert_eq!(value["access_token"], row.value.as_str());
        let expires_in = value["expires_in"]
            .as_i64()
            .expect("expires_in is a number");
        assert!(expires_in <= row.expires_at - now + 1 && expires_in > row.expires_at - now - 60);
        // Go's json.Marshal of the map, keys sorted.
        assert_eq!(
            redis.get(1, &key).unwrap(),
            format!(
                r#"{{"access_token":"{}","expires_in":{expires_in}}}"#,
                row.value
            )
        );
    }
    let mut keys = vec![
        format!("powerwechat.access_token.{OA_MD5}"),
        format!("powerwechat.access_token.{APP_MD5}"),
        format!("powerwechat.basic_service.jssdk.ticket.jsapi.{OA}"),
        format!("powerwechat.basic_service.jssdk.ticket.wx_card.{OA}"),
    ];
    keys.sort();
    assert_eq!(redis.keys(1), keys);
    let ticket: Value = serde_json::from_str(
        &redis
            .get(
                1,
                &format!("powerwechat.basic_service.jssdk.ticket.jsapi.{OA}"),
            )
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ticket["ticket"], r.oa_jsapi.value.as_str());
    assert_eq!(ticket["errcode"], 0);
}

#[test]
fn plain_and_json_follow_the_key_template() {
    let env = with_accounts();
    let Some(redis) = start_redis(&env) else {
        return;
    };
    add_sink(
        &env,
        "p",
        &redis.url(2),
        "plain",
        &["--key", "tok:{appid}:{agentid}", "--appid", APP],
    );
    add_sink(
        &env,
        "j",
        &redis.url(3),
        "json",
        &["--key", "wx:{appid}:{kind}", "--appid", OA],
    );
    run(&env, &["refresh"], 0);
    let r = rows(&env);
    // Without {kind}, only the token: tickets would overwrite it.
    assert_published(
        &redis,
        2,
        &[e(format!("tok:{CORP}:1000002"), &r.app.value, &r.app)],
    );
    let keys = redis.keys(3);
    assert_eq!(
        keys,
        [
            format!("wx:{OA}:access_token"),
            format!("wx:{OA}:jsapi"),
            format!("wx:{OA}:wx_card")
        ]
    );
    let v: Value = serde_json::from_str(&redis.get(3, &keys[0]).unwrap()).unwrap();
    assert_eq!(v["access_token"], r.oa.value.as_str());
    assert_eq!(v["expires_at"], r.oa.expires_at);
    let left = v["expires_in"].as_i64().unwrap();
    assert!(left <= r.oa.expires_at - unix_now() + 1 && left > 7000);
    let v: Value = serde_json::from_str(&redis.get(3, &keys[1]).unwrap()).unwrap();
    assert_eq!(v["ticket"], r.oa_jsapi.value.as_str());
}

// ---- when it publishes ----

#[test]
fn the_ttl_is_the_time_the_token_has_left_never_more() {
    let env = with_accounts();
    let Some(redis) = start_redis(&env) else {
        return;
    };
    env.api
        .push_for(standin::TOKEN, OA, Reply::token("SHORT-LIVED-TOKEN", 600));
    add_sink(&env, "s", &redis.url(0), "wxjava", &["--appid", OA]);
    run(&env, &["refresh", "--appid", OA], 0);
    let key = format!("wx:access_token:{OA}");
    assert_eq!(redis.get(0, &key).as_deref(), Some("SHORT-LIVED-TOKEN"));
    let ttl = redis.ttl(0, &key);
    assert!(
        (540..=600).contains(&ttl),
        "TTL {ttl} for a token with 600 s left"
    );
}

#[test]
fn a_flushed_redis_is_whole_again_after_one_run_without_fetching() {
    let env = with_accounts();
    let Some(mut redis) = start_redis(&env) else {
        return;
    };
    add_sink(&env, "s", &redis.url(0), "wxjava", &[]);
    run(&env, &["refresh"], 0);
    let before = redis.keys(0);
    assert_eq!(before.len(), 7);
    let fetches = env.api.hits(standin::TOKEN);
    redis.restart_empty();
    assert!(redis.keys(0).is_empty());
    // Every token is fresh, so a refresh-ahead run fetches nothing; it republishes them all.
    let out = run(&env, &["refresh", "--if-expiring-within", "5m"], 0);
    assert!(out.stderr.contains("3 already fresh"), "{}", out.stderr);
    assert_eq!(env.api.hits(standin::TOKEN), fetches);
    assert_eq!(redis.keys(0), before);
}

#[test]
fn redis_down_keeps_the_tokens_reports_per_sink_and_exits_9() {
    let env = with_accounts();
    let Some(mut redis) = start_redis(&env) else {
        return;
    };
    add_sink(&env, "cache", &redis.url(0), "wxjava", &[]);
    add_sink(&env, "py", &redis.url(1), "wechatpy", &["--appid", OA]);
    redis.stop();
    let out = run(&env, &["-q", "refresh"], 9);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("publish failed ("))
        .collect();
    assert_eq!(lines.len(), 2, "one line per sink:\n{}", out.stderr);
    assert!(
        lines[0].starts_with("wxtoken: sink cache: publish failed (7 of 7 not published"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("could not connect to Redis"),
        "{}",
        lines[0]
    );
    assert!(
        out.stderr
            .contains("refreshed 3 of 3 accounts; publish failed: cache, py"),
        "{}",
        out.stderr
    );
    // The tokens are stored and served.
    let token = run(&env, &["get", "--appid", OA], 0).stdout;
    assert_eq!(token.trim(), row(&env, OA, "access_token").value);
    // status shows the failure on the sink.
    let status = run(&env, &["status"], 0).stdout;
    assert!(status.contains("sink cache  redis"), "{status}");
    assert!(
        status.contains("FAILED, 7 of 7 not published: could not connect to Redis"),
        "{status}"
    );
    let json: Value = serde_json::from_str(&run(&env, &["status", "--json"], 0).stdout).unwrap();
    assert_eq!(json["sinks"][0]["last_publish"]["ok"], false);
    // Redis back: the next run publishes everything, without fetching again.
    let fetches = env.api.hits(standin::TOKEN) + env.api.hits(standin::STABLE_TOKEN);
    redis.restart_empty();
    run(&env, &["-q", "refresh", "--if-expiring-within", "5m"], 0);
    assert_eq!(redis.keys(0).len(), 7);
    assert_eq!(
        redis.keys(1).len(),
        4,
        "token and jsapi ticket, each with its _expires_at"
    );
    assert_eq!(
        env.api.hits(standin::TOKEN) + env.api.hits(standin::STABLE_TOKEN),
        fetches
    );
    let status = run(&env, &["status"], 0).stdout;
    assert!(status.contains("ok, 7 written"), "{status}");
}

#[test]
fn a_wechat_failure_outranks_a_publish_failure() {
    let env = with_accounts();
    let Some(mut redis) = start_redis(&env) else {
        return;
    };
    add_sink(&env, "cache", &redis.url(0), "wxjava", &[]);
    redis.stop();
    env.api.push_for(
        standin::TOKEN,
        OA,
        Reply::errcode(45009, "api freq out of limit"),
    );
    let out = run(&env, &["refresh"], 4);
    assert!(
        out.stderr.contains("sink cache: publish failed"),
        "{}",
        out.stderr
    );
}

#[test]
fn get_reject_publishes_the_new_token() {
    let env = with_accounts();
    let Some(redis) = start_redis(&env) else {
        return;
    };
    add_sink(&env, "s", &redis.url(0), "silenceper", &["--appid", OA]);
    run(&env, &["refresh", "--appid", OA], 0);
    let key = format!("gowechat_officialaccount__access_token_{OA}");
    let old = redis.get(0, &key).expect("published");
    let new = run(&env, &["get", "--appid", OA, "--reject", &old], 0).stdout;
    assert_ne!(new.trim(), old);
    assert_eq!(redis.get(0, &key).as_deref(), Some(new.trim()));
}

#[test]
fn get_reject_prints_the_token_and_only_warns_when_publishing_fails() {
    let env = with_accounts();
    let Some(mut redis) = start_redis(&env) else {
        return;
    };
    add_sink(&env, "s", &redis.url(0), "wxjava", &["--appid", OA]);
    run(&env, &["refresh", "--appid", OA], 0);
    let old = row(&env, OA, "access_token").value;
    redis.stop();
    let out = run(&env, &["get", "--appid", OA, "--reject", &old], 0);
    let new = row(&env, OA, "access_token").value;
    assert_ne!(new, old);
    assert_eq!(out.stdout, format!("{new}\n"));
    assert!(
        out.stderr
            .starts_with("wxtoken: warning: sink s: publish failed"),
        "{}",
        out.stderr
    );
    // The next refresh publishes it (a refresh-ahead run: no new token to replace it).
    redis.restart_empty();
    run(
        &env,
        &["refresh", "--appid", OA, "--if-expiring-within", "5m"],
        0,
    );
    assert_eq!(redis.get(0, &format!("wx:access_token:{OA}")), Some(new));
}

#[test]
fn sinks_publish_only_the_accounts_they_select() {
    let env = with_accounts();
    let Some(redis) = start_redis(&env) else {
        return;
    };
    add_sink(&env, "s", &redis.url(0), "wxjava", &["--appid", APP]);
    run(&env, &["refresh"], 0);
    assert!(
        redis.keys(0).iter().all(|k| k.starts_with("wx:cp:")),
        "{:?}",
        redis.keys(0)
    );
    assert_eq!(redis.keys(0).len(), 3);
}

// ---- URLs and passwords ----

#[test]
fn a_password_is_never_an_argument_and_never_shown() {
    let env = with_accounts();
    let Some(redis) = Redis::start(&env.dir, &["--requirepass", REDIS_PASSWORD]) else {
        return;
    };
    let with_password = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/4", redis.port);
    let out = run(
        &env,
        &[
            "sink",
            "add",
            "s",
            "--redis",
            &with_password,
            "--format",
            "wxjava",
        ],
        2,
    );
    assert!(
        out.stderr.contains("must not be an argument"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(REDIS_PASSWORD));
    // From an environment variable, and from stdin.
    wxjava_sink_from_env(&env, &with_password, &["--appid", OA]);
    let out = env.run_with_stdin(
        &[
            "sink",
            "add",
            "t",
            "--redis",
            "-",
            "--format",
            "silenceper",
            "--appid",
            OA,
        ],
        &format!("{with_password}\n"),
    );
    out.assert_code(0);
    let outs = [
        run(&env, &["refresh"], 0),
        run(&env, &["sink", "list"], 0),
        run(&env, &["sink", "list", "--json"], 0),
        run(&env, &["status", "--json"], 0),
        run(&env, &["-vvv", "sink", "test", "s"], 0),
    ];
    for out in &outs {
        assert!(
            !out.stdout.contains(REDIS_PASSWORD) && !out.stderr.contains(REDIS_PASSWORD),
            "{out:?}"
        );
    }
    assert!(
        outs[1]
            .stdout
            .contains(&format!("redis://:***@127.0.0.1:{}/4", redis.port)),
        "{}",
        outs[1].stdout
    );
    // The URL is stored without it; the password goes through the secret column.
    let target = env.query("SELECT target FROM sinks WHERE name = 's'");
    assert_eq!(target, format!("redis://127.0.0.1:{}/4", redis.port));
    // Encrypted at rest, bound to the sink: nothing the store keeps holds the password's
    // bytes (SQLite: the database, its -wal and -shm; PostgreSQL: every row of every table).
    let stored = env.query("SELECT password FROM sinks WHERE name = 's'");
    assert!(
        stored.starts_with(&format!("wxs1:{}:", env.kid())),
        "{stored}"
    );
    assert_eq!(
        store_contains(&env, REDIS_PASSWORD),
        None,
        "the Redis password is in what the store keeps"
    );
    // The ciphertext of one sink does not open as another's.
    env.execute(
        "UPDATE sinks SET password = (SELECT password FROM sinks WHERE name = 's') WHERE name = 't'",
    );
    let out = run(&env, &["sink", "test", "s"], 7);
    assert!(out.stderr.contains("sink t"), "{}", out.stderr);
    // wxjava: the token and two tickets; silenceper: the token and the jsapi ticket.
    assert_eq!(redis.keys(4).len(), 5, "both sinks wrote to database 4");
}

/// Whether any byte sequence the store keeps (SQLite: the database, its -wal and -shm;
/// PostgreSQL: every row of every table) contains `needle`.
fn store_contains(env: &TestEnv, needle: &str) -> Option<String> {
    let kept: Vec<(String, Vec<u8>)> = if env.is_postgres() {
        vec![("the database".into(), env.written_state())]
    } else {
        ["", "-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let file = format!("{}{suffix}", env.db().display());
                let bytes = std::fs::read(&file).unwrap_or_default();
                (file, bytes)
            })
            .collect()
    };
    kept.into_iter()
        .find(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(what, _)| what)
}

#[test]
fn credentials_in_the_query_are_secrets_too() {
    const ACL_USER: &str = "acl-user-Qz8";
    const ACL_PASS: &str = "acl-pass-Zq9";
    let env = with_accounts();
    let sock = env.dir.join("redis").join("r.sock");
    let sock_arg = sock.display().to_string();
    let Some(redis) = Redis::start(
        &env.dir,
        &["--requirepass", REDIS_PASSWORD, "--unixsocket", &sock_arg],
    ) else {
        return;
    };
    redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                ACL_USER,
                "on",
                &format!(">{ACL_PASS}"),
                "~wx:*",
                "+set",
                "+select",
            ][..],
        )
        .query::<()>(&mut redis.conn(0))
        .unwrap();
    let unix_pass = format!("redis+unix://{sock_arg}?db=3&pass={REDIS_PASSWORD}");
    let tcp_password = format!(
        "redis://127.0.0.1:{}/4?password={REDIS_PASSWORD}",
        redis.port
    );
    let unix_user = format!("redis+unix://{sock_arg}?user={ACL_USER}&pass={ACL_PASS}&db=5");
    let secrets = [REDIS_PASSWORD, ACL_USER, ACL_PASS];
    let clean = |out: &Out| {
        for s in secrets {
            assert!(
                !out.stdout.contains(s) && !out.stderr.contains(s),
                "{s} shown: {out:?}"
            );
        }
    };
    // Refused as arguments, with one line that says how to pass them.
    for url in [&unix_pass, &tcp_password, &unix_user] {
        let out = env.run(&["sink", "add", "u", "--redis", url, "--format", "wxjava"]);
        out.assert_one_line_error(2)
            .assert_stderr_has(&["must not be an argument", "--redis -"]);
        clean(&out);
    }
    assert_eq!(env.query_i64("SELECT count(*) FROM sinks"), 0);
    // Taken on stdin.
    let mut outs = Vec::new();
    for (name, url, format) in [
        ("u1", &unix_pass, "wxjava"),
        ("u2", &tcp_password, "silenceper"),
        ("u3", &unix_user, "wxjava"),
    ] {
        let args = [
            "sink", "add", name, "--redis", "-", "--format", format, "--appid", OA,
        ];
        let out = env.run_with_stdin(&args, &format!("{url}\n"));
        out.assert_code(0);
        outs.push(out);
    }
    // Every one authenticates (`password` too, which the Redis client alone ignores on TCP).
    outs.push(run(&env, &["refresh"], 0));
    assert_eq!(redis.keys(3).len(), 3, "u1 wrote to database 3");
    assert_eq!(redis.keys(4).len(), 2, "u2 wrote to database 4");
    assert_eq!(
        redis.keys(5).len(),
        3,
        "u3 wrote to database 5 as {ACL_USER}"
    );
    for args in [
        &["sink", "list"][..],
        &["sink", "list", "--json"],
        &["status"],
        &["status", "--json"],
        &["-vvv", "sink", "test", "u1"],
        &["-vvv", "sink", "test", "u3"],
    ] {
        outs.push(run(&env, args, 0));
    }
    outs.iter().for_each(clean);
    let list = &outs[4].stdout;
    assert!(
        list.contains(&format!("u1  redis redis+unix://{sock_arg}?db=3&pass=*** ")),
        "{list}"
    );
    assert!(
        list.contains(&format!(
            "u2  redis redis://:***@127.0.0.1:{}/4 ",
            redis.port
        )),
        "{list}"
    );
    assert!(
        list.contains(&format!(
            "u3  redis redis+unix://{sock_arg}?user=***&db=5&pass=*** "
        )),
        "{list}"
    );
    // Sealed at rest: no row of any table holds them.
    for s in secrets {
        assert_eq!(store_contains(&env, s), None, "{s} is stored in the clear");
    }
    // A wrong password fails the publish without showing it.
    let wrong = format!("redis+unix://{sock_arg}?pass=not-{REDIS_PASSWORD}");
    let args = [
        "sink", "add", "w", "--redis", "-", "--format", "wxjava", "--appid", OA,
    ];
    env.run_with_stdin(&args, &format!("{wrong}\n"))
        .assert_code(0);
    let out = run(&env, &["sink", "test", "w"], 9);
    clean(&out);
    // A sink stored by an older version, its password in the URL: still works, never
    // shown, and `sink list` says how to have it sealed.
    env.execute(&format!(
        "UPDATE sinks SET target = '{unix_pass}', password = NULL WHERE name = 'u1'"
    ));
    redis::cmd("FLUSHALL")
        .query::<()>(&mut redis.conn(0))
        .unwrap();
    run(&env, &["sink", "test", "u1"], 0);
    assert_eq!(redis.keys(3).len(), 3, "u1 wrote to database 3");
    let out = run(&env, &["sink", "list"], 0);
    clean(&out);
    assert!(out.stdout.contains("?db=3&pass=*** "), "{}", out.stdout);
    out.assert_stderr_has(&[
        "sink u1 keeps a Redis credential in clear text",
        "--redis -",
    ]);
    assert!(!out.stderr.contains("sink u3"), "{}", out.stderr);
}

#[test]
fn a_wrong_password_is_a_publish_failure_that_does_not_show_it() {
    let env = with_accounts();
    let Some(redis) = Redis::start(&env.dir, &["--requirepass", REDIS_PASSWORD]) else {
        return;
    };
    let url = format!("redis://:not-{REDIS_PASSWORD}@127.0.0.1:{}/0", redis.port);
    wxjava_sink_from_env(&env, &url, &[]);
    let out = run(&env, &["refresh"], 9);
    assert!(
        out.stderr.contains("sink s: publish failed"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(REDIS_PASSWORD), "{}", out.stderr);
}

#[test]
fn an_acl_user_and_a_database_number() {
    let env = with_accounts();
    let Some(redis) = start_redis(&env) else {
        return;
    };
    sink_as_user(&env, &redis, "wxtoken", "~wx:*", 5);
    run(&env, &["refresh"], 0);
    assert_eq!(redis.keys(5).len(), 3);
    let list = run(&env, &["sink", "list"], 0).stdout;
    assert!(
        list.contains(&format!("redis://wxtoken:***@127.0.0.1:{}/5", redis.port)),
        "{list}"
    );
}

#[test]
fn rediss_verifies_the_server_certificate() {
    let env = with_accounts();
    let Some(redis) = Redis::start_tls(&env.dir) else {
        return;
    };
    let url = format!("rediss://localhost:{}/0", redis.port);
    run(
        &env,
        &[
            "sink", "add", "tls", "--redis", &url, "--format", "wxjava", "--appid", OA,
        ],
        0,
    );
    // A certificate from a CA the system does not trust: refused, reported, exit 9.
    let out = run(&env, &["refresh"], 9);
    assert!(
        out.stderr.contains("sink tls: publish failed"),
        "{}",
        out.stderr
    );
    assert!(redis.keys(0).is_empty());
    // Trusting that CA (rustls-native-certs reads SSL_CERT_FILE): published over TLS.
    env.set_env(
        "SSL_CERT_FILE",
        &redis.ca.as_ref().unwrap().display().to_string(),
    );
    run(&env, &["refresh"], 0);
    assert_eq!(redis.keys(0).len(), 3);
}

#[test]
fn a_partly_refused_publish_counts_each_key() {
    let env = with_accounts();
    let Some(redis) = start_redis(&env) else {
        return;
    };
    // This user may write access tokens, not tickets.
    sink_as_user(&env, &redis, "tok", "~wx:access_token:*", 0);
    let out = run(&env, &["refresh"], 9);
    assert!(
        out.stderr
            .contains("sink s: publish failed (2 of 3 not published"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("NoPerm"), "{}", out.stderr);
    assert_eq!(redis.keys(0), [format!("wx:access_token:{OA}")]);
    let test = run(&env, &["sink", "test", "s"], 9);
    let lines: Vec<&str> = test.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", test.stdout);
    assert!(
        lines[0].starts_with(&format!("wx:access_token:{OA}  ok, expires in ")),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("wx:ticket:key:{OA}:jsapi  FAILED: ")),
        "{}",
        lines[1]
    );
}

/// `sink add s --redis-env REDIS_URL --format wxjava EXTRA...`, with REDIS_URL = `url`
/// (a URL with a password never goes on the command line).
fn wxjava_sink_from_env(env: &TestEnv, url: &str, extra: &[&str]) {
    env.set_env("REDIS_URL", url);
    let mut args = vec![
        "sink",
        "add",
        "s",
        "--redis-env",
        "REDIS_URL",
        "--format",
        "wxjava",
    ];
    args.extend_from_slice(extra);
    run(env, &args, 0);
}

/// Creates the Redis user `user` with password `pass`, allowed SET on keys matching
/// `pattern`, and a wxjava sink for the Official Account that logs in as it on `db`.
fn sink_as_user(env: &TestEnv, redis: &Redis, user: &str, pattern: &str, db: u8) {
    let acl = [
        &["SETUSER", user, "on", ">pass-of-user", pattern][..],
        &["+set", "+select", "+ping"],
    ];
    redis::cmd("ACL")
        .arg(&acl.concat()[..])
        .query::<()>(&mut redis.conn(0))
        .unwrap();
    let url = format!("redis://{user}:pass-of-user@127.0.0.1:{}/{db}", redis.port);
    wxjava_sink_from_env(env, &url, &["--appid", OA]);
}

// ---- hooks ----

#[test]
fn a_hook_gets_the_token_on_stdin_and_the_rest_in_the_environment() {
    let env = with_accounts();
    let out_file = env.dir.join("hook.out");
    let hook = format!(
        "{{ read -r t; printf '%s|%s|%s|%s|%s|%s\\n' \"$t\" \"$WXTOKEN_SINK\" \"$WXTOKEN_APPID\" \
         \"$WXTOKEN_AGENTID\" \"$WXTOKEN_KIND\" \"$WXTOKEN_EXPIRES_AT\"; }} >> {}",
        out_file.display()
    );
    run(
        &env,
        &["sink", "add", "h", "--exec", &hook, "--appid", APP],
        0,
    );
    run(&env, &["refresh"], 0);
    let r = rows(&env);
    let text = std::fs::read_to_string(&out_file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let mut expected = vec![
        format!(
            "{}|h|{CORP}|1000002|access_token|{}",
            r.app.value, r.app.expires_at
        ),
        format!(
            "{}|h|{CORP}|1000002|jsapi|{}",
            r.app_jsapi.value, r.app_jsapi.expires_at
        ),
        format!(
            "{}|h|{CORP}|1000002|agent_config|{}",
            r.app_agent.value, r.app_agent.expires_at
        ),
    ];
    expected.sort();
    assert_eq!(lines, expected);
    // A hook runs once per new token: the next run that fetches nothing has nothing new.
    run(&env, &["refresh", "--if-expiring-within", "5m"], 0);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), text);
}

#[test]
fn a_failing_hook_is_reported_and_retried_by_the_next_run() {
    let env = with_accounts();
    let flag = env.dir.join("fail");
    let seen = env.dir.join("seen");
    std::fs::write(&flag, "").unwrap();
    let hook = format!(
        "read -r t; if [ -e {f} ]; then echo \"cannot deliver $t\" >&2; exit 3; fi; echo \"$t\" >> {s}",
        f = flag.display(),
        s = seen.display()
    );
    run(
        &env,
        &["sink", "add", "h", "--exec", &hook, "--appid", MP],
        0,
    );
    let out = run(&env, &["refresh"], 9);
    let token = row(&env, MP, "access_token").value;
    assert!(
        out.stderr
            .contains("sink h: publish failed (1 of 1 not published"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("exited with status 3: cannot deliver ***"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&token), "the token never shows");
    std::fs::remove_file(&flag).unwrap();
    run(&env, &["refresh"], 0);
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        format!("{token}\n")
    );
}

#[test]
fn a_hook_that_hangs_is_killed_after_its_timeout() {
    let env = with_accounts();
    run(
        &env,
        &[
            "sink",
            "add",
            "h",
            "--exec",
            "sleep 60",
            "--timeout",
            "1",
            "--appid",
            MP,
        ],
        0,
    );
    let started = std::time::Instant::now();
    let out = run(&env, &["refresh"], 9);
    assert!(
        out.stderr.contains("timed out after 1s and was killed"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

// ---- files written by name ----

/// Runs `wxtoken ARGS` through `/bin/sh -c 'PRELUDE; exec wxtoken ARGS'`, the shell having
/// the variables `vars` too: `exec` hands wxtoken the shell's pid (`$$`) and whatever
/// descriptors the prelude opened.
fn spawn_via_sh(env: &TestEnv, prelude: &str, vars: &[(&str, &str)], args: &[&str]) -> Child {
    let inner = env.command(args);
    let mut sh = Command::new("/bin/sh");
    sh.env_clear().current_dir(&env.dir);
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    sh.envs(vars.iter().copied())
        .arg("-c")
        .arg(format!(r#"{prelude}; exec "$@""#))
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the shell")
}

/// Runs `wxtoken ARGS` after planting a symlink to `victim` at `.{name}.PID.tmp` in `dir`,
/// PID being wxtoken's own: the temporary name a metrics writer with a predictable name
/// would use.
fn run_with_planted_link(
    env: &TestEnv,
    victim: &Path,
    dir: &Path,
    name: &str,
    args: &[&str],
) -> Out {
    let vars = [
        ("VICTIM", victim.to_str().unwrap()),
        ("DIR", dir.to_str().unwrap()),
        ("NAME", name),
    ];
    finish(spawn_via_sh(
        env,
        r#"ln -s "$VICTIM" "$DIR/.$NAME.$$.tmp""#,
        &vars,
        args,
    ))
}

/// How long a run may take before a test calls it hung.
const PATIENCE: Duration = Duration::from_secs(60);

/// Waits for a spawned process; kills it and fails if it outlives PATIENCE.
#[track_caller]
fn finish(child: Child) -> Out {
    support::finish_within(child, PATIENCE)
}

#[test]
fn metrics_file_never_writes_through_a_planted_symlink() {
    use std::os::unix::fs::MetadataExt;
    let env = with_accounts();
    let textfile = env.dir.join("textfile");
    std::fs::create_dir(&textfile).unwrap();
    let target = textfile.join("wxtoken.prom");
    let key = env.key_file();
    let before = std::fs::read(&key).unwrap();
    let mode = std::fs::metadata(&key).unwrap().mode();
    // A link at the name a predictable temporary file would have.
    let out = run_with_planted_link(
        &env,
        &key,
        &textfile,
        "wxtoken.prom",
        &["refresh", "--metrics-file", target.to_str().unwrap()],
    );
    out.assert_code(0);
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the key file was overwritten"
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().mode(),
        mode,
        "the key file's mode"
    );
    let meta = std::fs::symlink_metadata(&target).unwrap();
    assert!(meta.is_file(), "the metrics file is a file of its own");
    assert_eq!(meta.mode() & 0o777, 0o644);
    assert!(
        std::fs::read_to_string(&target)
            .unwrap()
            .contains("wxtoken_accounts 3\n")
    );
    // A link at the target itself is replaced by the file, never written through.
    std::fs::remove_file(&target).unwrap();
    std::os::unix::fs::symlink(&key, &target).unwrap();
    run(
        &env,
        &["refresh", "--metrics-file", target.to_str().unwrap()],
        0,
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the key file was overwritten"
    );
    assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
    // Nothing else was left in the directory: the file and the planted link only.
    let mut left: Vec<String> = std::fs::read_dir(&textfile)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left[0].starts_with(".wxtoken.prom.") && left[1] == "wxtoken.prom",
        "{left:?}"
    );
    // The secrets still open: the next run works.
    run(&env, &["refresh"], 0);
}

#[test]
fn a_hook_that_leaves_a_background_child_does_not_hold_refresh() {
    let env = with_accounts();
    let pid_file = env.dir.join("background.pid");
    // What the issue tried: a hook that succeeds and leaves a long sleep behind, which
    // holds the hook's stderr open.
    let hook = format!(
        "read -r t; sleep 200 & echo $! > {}; exit 0",
        pid_file.display()
    );
    run(
        &env,
        &[
            "sink",
            "add",
            "h",
            "--exec",
            &hook,
            "--timeout",
            "2",
            "--appid",
            MP,
        ],
        0,
    );
    let out = finish(env.spawn(&["refresh"]));
    out.assert_code(0);
    // The background child was killed with the hook's process group: gone, or a zombie
    // waiting for init.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive = std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim().to_string()))
            .is_some_and(|rest| !rest.starts_with('Z'));
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hook's background child {pid} survived"
        );
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

#[test]
fn sigterm_during_a_hook_stops_it_and_the_run() {
    let env = with_accounts();
    let started = env.dir.join("hook.started");
    let hook = format!("read -r t; touch {}; sleep 200", started.display());
    run(
        &env,
        &[
            "sink",
            "add",
            "h",
            "--exec",
            &hook,
            "--timeout",
            "120",
            "--appid",
            MP,
        ],
        0,
    );
    let child = env.spawn(&["refresh"]);
    let deadline = Instant::now() + PATIENCE;
    while !started.exists() {
        assert!(Instant::now() < deadline, "the hook never started");
        std::thread::park_timeout(Duration::from_millis(5));
    }
    // SAFETY: kill sends a signal to the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = finish(child);
    out.assert_code(8)
        .assert_stderr_has(&["stopped by SIGTERM: killed", "stopped by SIGTERM"]);
}

#[test]
fn a_hook_gets_a_clean_environment_and_no_inherited_descriptor() {
    let env = with_accounts();
    let env_file = env.dir.join("hook.env");
    let fd_file = env.dir.join("hook.fds");
    env.set_env("PGPASSWORD", "pg-Secret-in-env-41");
    env.set_env("SOME_TOKEN", "other-Secret-42");
    env.set_env("HOME", "/home/wxtoken-test");
    env.set_env("LANG", "C.UTF-8");
    // `ls` lists its own descriptors: 3 is the directory it reads. (A redirection on the
    // command itself would show the shell's saved copy of stdout too.)
    let hook = format!(
        "read -r t; env > {}; exec > {}; exec ls /proc/self/fd",
        env_file.display(),
        fd_file.display()
    );
    run(
        &env,
        &["sink", "add", "h", "--exec", &hook, "--appid", MP],
        0,
    );
    // wxtoken itself inherits descriptor 7 (as from a caller's `flock 7` or a pipe): the
    // hook must not.
    let out = finish(spawn_via_sh(&env, "exec 7</dev/null", &[], &["refresh"]));
    out.assert_code(0);
    let text = std::fs::read_to_string(&env_file).unwrap();
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| *k != "PWD")
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "HOME",
            "LANG",
            "PATH",
            "WXTOKEN_AGENTID",
            "WXTOKEN_APPID",
            "WXTOKEN_EXPIRES_AT",
            "WXTOKEN_EXPIRES_IN",
            "WXTOKEN_KIND",
            "WXTOKEN_SINK",
        ],
        "{text}"
    );
    assert!(!text.contains("Secret"), "{text}");
    assert!(
        !text.contains(&env.store()),
        "the store's location reached the hook: {text}"
    );
    assert_eq!(std::fs::read_to_string(&fd_file).unwrap(), "0\n1\n2\n3\n");
}

#[test]
fn a_redis_that_never_answers_or_trickles_costs_one_timeout_per_sink() {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    let env = with_accounts();
    // Two servers that accept: one never answers, one answers a byte at a time, forever.
    let mut ports = Vec::new();
    for trickle in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        ports.push(listener.local_addr().unwrap().port());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf);
                    loop {
                        if trickle && stream.write_all(b"+").is_err() {
                            return;
                        }
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) if !trickle => return,
                            _ => {}
                        }
                        if trickle {
                            std::thread::park_timeout(Duration::from_millis(200));
                        }
                    }
                });
            }
        });
    }
    for (name, port) in ["silent", "trickle"].iter().zip(&ports) {
        let url = format!("redis://127.0.0.1:{port}/0");
        add_sink(&env, name, &url, "wxjava", &["--timeout", "1"]);
    }
    let out = finish(env.spawn(&["refresh"]));
    out.assert_code(9).assert_stderr_has(&[
        "sink silent: publish failed",
        "sink trickle: publish failed",
        "within 1s",
    ]);
    let status = run(&env, &["status", "--json"], 0);
    assert!(status.stdout.contains("within 1s"), "{}", status.stdout);
}

#[test]
fn a_closed_stderr_never_ends_a_run() {
    let env = with_accounts();
    // A sink that fails (nothing listens on its port), so that the run has lines to write.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    add_sink(
        &env,
        "gone",
        &format!("redis://127.0.0.1:{port}/0"),
        "wxjava",
        &[],
    );
    let metrics = env.dir.join("wxtoken.prom");
    let mut child = env
        .command(&["-v", "refresh", "--metrics-file", metrics.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads stderr: every write to it fails with EPIPE.
    drop(child.stderr.take());
    let out = finish(child);
    out.assert_code(9);
    let text = std::fs::read_to_string(&metrics).expect("the metrics file was written");
    assert!(text.contains("wxtoken_accounts 3\n"), "{text}");
    // The run was recorded as usual.
    assert_eq!(env.query_i64("SELECT count(*) FROM runs"), 1);
}

#[test]
fn store_copy_moves_the_sinks_both_ways_with_their_passwords_sealed() {
    let Some(server) = support::pg::server() else {
        return;
    };
    let env = with_accounts();
    let Some(redis) = Redis::start(&env.dir, &["--requirepass", REDIS_PASSWORD]) else {
        return;
    };
    let url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/2\n", redis.port);
    let args = [
        "sink", "add", "r", "--redis", "-", "--format", "wxjava", "--appid", OA,
    ];
    env.run_with_stdin(&args, &url).assert_code(0);
    run(
        &env,
        &[
            "sink",
            "add",
            "h",
            "--exec",
            "cat >/dev/null",
            "--appid",
            MP,
        ],
        0,
    );
    run(&env, &["refresh"], 0);
    let list = run(&env, &["sink", "list"], 0).stdout;
    // SQLite to PostgreSQL.
    let db = server.create_db();
    let mut copy = env.command(&["store", "copy"]);
    copy.env("WXTOKEN_COPY_TO", &db.url);
    let out = Out::from_output(copy.output().unwrap());
    out.assert_code(0).assert_stderr_has(&["2 sink(s)"]);
    let stored = db.query("SELECT password FROM sinks WHERE name = 'r'");
    assert!(
        stored.starts_with(&format!("wxs1:{}:", env.kid())),
        "{stored}"
    );
    let rows = db.query("SELECT * FROM sinks");
    assert!(!rows.contains(REDIS_PASSWORD), "{rows}");
    env.set_env("WXTOKEN_DB", &db.url);
    assert_eq!(run(&env, &["sink", "list"], 0).stdout, list);
    // The copy publishes: its password opened with the same key file.
    redis::cmd("FLUSHALL")
        .query::<()>(&mut redis.conn(0))
        .unwrap();
    run(&env, &["sink", "test", "r"], 0);
    assert_eq!(redis.keys(2).len(), 3);
    // And back: PostgreSQL to a new SQLite file.
    let back = env.dir.join("back.db");
    let out = run(&env, &["store", "copy", "--to", back.to_str().unwrap()], 0);
    out.assert_stderr_has(&["2 sink(s)"]);
    env.set_env("WXTOKEN_DB", back.to_str().unwrap());
    assert_eq!(run(&env, &["sink", "list"], 0).stdout, list);
    redis::cmd("FLUSHALL")
        .query::<()>(&mut redis.conn(0))
        .unwrap();
    run(&env, &["sink", "test", "r"], 0);
    assert_eq!(redis.keys(2).len(), 3);
    let bytes = std::fs::read(&back).unwrap();
    assert!(
        !bytes
            .windows(REDIS_PASSWORD.len())
            .any(|w| w == REDIS_PASSWORD.as_bytes()),
        "the Redis password is in the copied file"
    );
}

// ---- the commands ----

#[test]
fn sink_add_checks_its_arguments() {
    let env = with_accounts();
    let cases: &[(&[&str], &str)] = &[
        (&["--redis", "redis://h/0"], "--redis needs --format"),
        (
            &["--redis", "redis://h/0", "--format", "memcache"],
            "unknown format 'memcache'",
        ),
        (
            &["--redis", "redis://h/0", "--format", "plain"],
            "needs --key",
        ),
        (
            &[
                "--redis",
                "redis://h/0",
                "--format",
                "json",
                "--key",
                "x:{app}",
            ],
            "unknown placeholder {app}",
        ),
        (
            &[
                "--redis",
                "redis://h/0",
                "--format",
                "plain",
                "--key",
                "fixed",
            ],
            "needs exactly one --appid",
        ),
        (
            &["--redis", "redis://h/0", "--format", "wxjava", "--key", "k"],
            "--key is for plain and json",
        ),
        (
            &["--redis", "http://h/0", "--format", "wxjava"],
            "is not redis://",
        ),
        (&["--exec", "true", "--format", "wxjava"], "not --exec"),
    ];
    for (args, message) in cases {
        let mut all = vec!["sink", "add", "s"];
        all.extend_from_slice(args);
        let out = run(&env, &all, 2);
        assert!(out.stderr.starts_with("wxtoken: error: "), "{}", out.stderr);
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }
    run(
        &env,
        &[
            "sink",
            "add",
            "s",
            "--exec",
            "true",
            "--appid",
            "wxnosuchaccount",
        ],
        6,
    );
    run(&env, &["sink", "add", "s", "--exec", "true"], 0);
    run(&env, &["sink", "add", "s", "--exec", "true"], 6);
    run(&env, &["sink", "remove", "nope"], 6);
    run(&env, &["sink", "test", "nope"], 6);
}

#[test]
fn sink_list_and_remove() {
    let env = with_accounts();
    run(
        &env,
        &[
            "sink",
            "add",
            "b",
            "--redis",
            "redis://10.0.0.5:6380/2",
            "--format",
            "wechatpy",
            "--prefix",
            "app1",
        ],
        0,
    );
    run(
        &env,
        &[
            "sink",
            "add",
            "a",
            "--exec",
            "/usr/local/bin/push",
            "--appid",
            OA,
        ],
        0,
    );
    let list = run(&env, &["sink", "list"], 0).stdout;
    assert_eq!(
        list,
        format!(
            "a  exec \"/usr/local/bin/push\" accounts={OA} timeout=10s\n\
             b  redis redis://10.0.0.5:6380/2 format=wechatpy prefix=\"app1\" accounts=every account timeout=10s\n"
        )
    );
    let json: Value =
        serde_json::from_str(&run(&env, &["sink", "list", "--json"], 0).stdout).unwrap();
    assert_eq!(json["sinks"][1]["format"], "wechatpy");
    assert_eq!(json["sinks"][1]["prefix"], "app1");
    assert_eq!(json["sinks"][0]["accounts"][0], OA);
    run(&env, &["sink", "remove", "a"], 0);
    let list = run(&env, &["sink", "list"], 0).stdout;
    assert!(list.starts_with("b  redis"), "{list}");
}

/// A run over more accounts than one read of the store covers (500) publishes the newest row
/// of every credential of every account, on both sides of the batch boundary, and skips
/// each newest row that has expired, never falling back to an older valid one.
#[test]
fn a_run_over_two_batches_of_accounts_publishes_every_valid_newest_row() {
    const ACCOUNTS: i64 = 1_100;
    let env = TestEnv::new();
    let Some(redis) = start_redis(&env) else {
        return;
    };
    add_sink(
        &env,
        "s",
        &redis.url(1),
        "plain",
        &["--key", "wx:{appid}:{kind}"],
    );
    // The accounts go in by SQL (a thousand `account add` runs would be slow), with their
    // secrets in plaintext as an earlier version stored them: publishing reads them as is.
    let numbers = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ACCOUNTS})"
    );
    if env.is_postgres() {
        env.execute(&format!(
            "INSERT INTO accounts (appid, tickets, created_at, updated_at) {numbers}
             SELECT 'wxbulk' || CAST(i AS TEXT), 'jsapi', 0, 0 FROM n"
        ));
        env.execute(
            "INSERT INTO account_secrets (account_id, secret)
             SELECT id, 'secret' || CAST(id AS TEXT) FROM accounts",
        );
    } else {
        env.execute(&format!(
            "INSERT INTO accounts (appid, secret, tickets, created_at, updated_at) {numbers}
             SELECT 'wxbulk' || CAST(i AS TEXT), 'secret' || CAST(i AS TEXT), 'jsapi', 0, 0
             FROM n"
        ));
    }
    assert_eq!(
        env.query("SELECT count(*), min(id), max(id) FROM accounts"),
        format!("{ACCOUNTS}|1|{ACCOUNTS}")
    );
    // Per account and kind an older valid row, then the newest: expired for both kinds of
    // every hundredth account, and for the ticket of every fiftieth one between them.
    let now = unix_now();
    let tokens = |prefix: &str, expires_at: &str| {
        env.execute(&format!(
            "INSERT INTO tokens (account_id, kind, token, expires_in, fetched_at, expires_at)
             SELECT a.id, k.kind, '{prefix}-' || k.kind || '-' || CAST(a.id AS TEXT), 7200,
                    {now}, {expires_at}
             FROM accounts a
             CROSS JOIN (SELECT 'access_token' AS kind UNION ALL SELECT 'jsapi') k"
        ))
    };
    tokens("old", &format!("{now} + 7000"));
    tokens(
        "new",
        &format!(
            "CASE WHEN a.id % 100 = 0 OR (a.id % 100 = 50 AND k.kind = 'jsapi')
                  THEN {now} - 60 ELSE {now} + 7000 END"
        ),
    );
    let mut expected = Vec::new();
    for id in 1..=ACCOUNTS {
        if id % 100 != 0 {
            expected.push(format!("new-access_token-{id}"));
            if id % 100 != 50 {
                expected.push(format!("new-jsapi-{id}"));
            }
        }
    }
    expected.sort();
    assert_eq!(expected.len(), 2 * 1_100 - 2 * 11 - 11);

    let out = run(&env, &["sink", "test", "s"], 0);
    let ok = out.stdout.lines().filter(|l| l.contains("  ok, ")).count();
    assert_eq!(ok, expected.len(), "{}", out.stderr);
    let keys = redis.keys(1);
    assert_eq!(keys.len(), expected.len());
    let mut values: Vec<String> = redis::cmd("MGET")
        .arg(&keys)
        .query(&mut redis.conn(1))
        .expect("MGET");
    values.sort();
    assert_eq!(values, expected);
}

// Every test again on PostgreSQL: publishing reads the tokens, sinks and their secrets from
// whichever store holds them.
also_on_postgres!(
    wxjava_keys_and_plain_values,
    wxjava_prefix_is_configurable,
    silenceper_keys_with_the_double_underscore,
    easywechat_keys_embed_the_secret_and_values_are_php_serialized,
    easywechat_without_a_namespace,
    wechatpy_json_values_and_expires_at_keys,
    powerwechat_md5_keys_and_json_objects_with_a_numeric_expires_in,
    plain_and_json_follow_the_key_template,
    the_ttl_is_the_time_the_token_has_left_never_more,
    a_flushed_redis_is_whole_again_after_one_run_without_fetching,
    redis_down_keeps_the_tokens_reports_per_sink_and_exits_9,
    a_wechat_failure_outranks_a_publish_failure,
    get_reject_publishes_the_new_token,
    get_reject_prints_the_token_and_only_warns_when_publishing_fails,
    sinks_publish_only_the_accounts_they_select,
    a_password_is_never_an_argument_and_never_shown,
    credentials_in_the_query_are_secrets_too,
    a_wrong_password_is_a_publish_failure_that_does_not_show_it,
    an_acl_user_and_a_database_number,
    rediss_verifies_the_server_certificate,
    a_partly_refused_publish_counts_each_key,
    a_hook_gets_the_token_on_stdin_and_the_rest_in_the_environment,
    a_failing_hook_is_reported_and_retried_by_the_next_run,
    a_hook_that_hangs_is_killed_after_its_timeout,
    a_hook_that_leaves_a_background_child_does_not_hold_refresh,
    sigterm_during_a_hook_stops_it_and_the_run,
    a_hook_gets_a_clean_environment_and_no_inherited_descriptor,
    a_redis_that_never_answers_or_trickles_costs_one_timeout_per_sink,
    metrics_file_never_writes_through_a_planted_symlink,
    a_closed_stderr_never_ends_a_run,
    sink_add_checks_its_arguments,
    sink_list_and_remove,
    a_run_over_two_batches_of_accounts_publishes_every_valid_newest_row,
);
