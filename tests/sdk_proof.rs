//! Proof against the real SDKs: wechatpy from PyPI and wechat-api from npm, installed by
//! .ci/run into `<target>/sdk/`, read what wxtoken published to a real Redis and make a
//! business call with it, and the stand-in sees no token fetch from them.
//! Skipped with a visible note when those installs are missing locally; never under CI.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::redis_server::{Redis, skip_without};
use support::standin;
use support::{TestEnv, run};

const OA: &str = "wx1234567890abcdef";
const OA_SECRET: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const CORP: &str = "ww7a3c5e9b1d2f4a6c";
const APP_SECRET: &str = "AppSecret1000002-q8Zr4LmW2xTn7VbKc9PdYs3Hf";

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

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name)
}

fn token_of(env: &TestEnv, args: &[&str]) -> String {
    run(env, args, 0).stdout.trim().to_string()
}

/// Every token fetch the stand-in has seen, from anyone.
fn fetches(env: &TestEnv) -> usize {
    [standin::TOKEN, standin::STABLE_TOKEN, standin::WORK_TOKEN]
        .iter()
        .map(|r| env.api.hits(r))
        .sum()
}

/// Runs `wxtoken` with the words of `line` (none has a space), `stdin` on its input.
#[track_caller]
fn words(env: &TestEnv, line: &str, stdin: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    env.run_with_stdin(&args, stdin).assert_code(0);
}

/// An Official Account with its jsapi ticket and a WeCom app with both tickets, a sink
/// added with `sink_args` on a fresh Redis, and one refresh; `None` to skip.
fn published(sink_args: &str) -> Option<(TestEnv, Redis)> {
    let env = TestEnv::new();
    let redis = Redis::start(&env.dir, &[])?;
    words(
        &env,
        &format!("account add --appid {OA} --ticket jsapi"),
        &format!("{OA_SECRET}\n"),
    );
    words(
        &env,
        &format!(
            "account add --corpid {CORP} --agentid 1000002 --ticket jsapi --ticket agent_config"
        ),
        &format!("{APP_SECRET}\n"),
    );
    words(
        &env,
        &format!("sink add s --redis {} {sink_args}", redis.url(0)),
        "",
    );
    words(&env, "refresh", "");
    Some((env, redis))
}

fn sdk_output(mut cmd: Command) -> Value {
    let out = cmd.output().expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn wechatpy_uses_the_published_token_and_tickets_without_fetching() {
    let python = sdk_dir().join("venv/bin/python");
    if skip_without("the wechatpy venv (<target>/sdk/venv)", python.is_file()) {
        return;
    }
    let Some((env, redis)) = published("--format wechatpy") else {
        return;
    };
    let fetched = fetches(&env);
    let tickets = env.api.hits(standin::TICKET) + env.api.hits(standin::WORK_CORP_TICKET);

    let mut cmd = Command::new(&python);
    cmd.arg(script("wechatpy_client.py"))
        .args([env.url(), redis.port.to_string(), OA.into(), CORP.into()])
        .env_clear()
        .env("OA_SECRET", OA_SECRET)
        .env("APP_SECRET", APP_SECRET)
        .env("NO_PROXY", "127.0.0.1");
    let got = sdk_output(cmd);

    assert_eq!(got["oa_token"], token_of(&env, &["get", "--appid", OA]));
    assert_eq!(
        got["oa_menu"]["errcode"], 0,
        "the business call succeeded: {got}"
    );
    assert_eq!(
        got["oa_jsapi_ticket"],
        token_of(&env, &["get", "--appid", OA, "--ticket", "jsapi"])
    );
    let app = ["--corpid", CORP, "--agentid", "1000002"];
    assert_eq!(
        got["work_token"],
        token_of(&env, &[&["get"][..], &app].concat())
    );
    assert_eq!(got["work_user"]["errcode"], 0, "{got}");
    assert_eq!(
        got["work_jsapi_ticket"],
        token_of(&env, &[&["get"][..], &app, &["--ticket", "jsapi"]].concat())
    );
    assert_eq!(
        got["work_agent_ticket"],
        token_of(
            &env,
            &[&["get"][..], &app, &["--ticket", "agent_config"]].concat()
        )
    );
    // The SDK fetched nothing: no token, no ticket.
    assert_eq!(fetches(&env), fetched, "wechatpy fetched a token");
    assert_eq!(
        env.api.hits(standin::TICKET) + env.api.hits(standin::WORK_CORP_TICKET),
        tickets
    );
    assert_eq!(env.api.hits(standin::MENU_GET), 1);
    assert_eq!(env.api.hits(standin::WORK_USER_GET), 1);
}

#[test]
fn wechat_api_callbacks_use_the_published_token_without_fetching() {
    let modules = sdk_dir().join("node/node_modules");
    let present = modules.join("wechat-api").is_dir() && which("node") && which("redis-cli");
    if skip_without("node, redis-cli or wechat-api (<target>/sdk/node)", present) {
        return;
    }
    let Some((env, redis)) = published("--format json --key wxtoken:{appid}:{kind}") else {
        return;
    };
    let fetched = fetches(&env);
    let tickets = env.api.hits(standin::TICKET);

    let mut cmd = Command::new("node");
    cmd.arg(script("wechat_api_client.js"))
        .args([env.url(), redis.port.to_string(), OA.into()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NODE_PATH", &modules)
        .env("OA_SECRET", OA_SECRET);
    let got = sdk_output(cmd);

    assert_eq!(got["token"], token_of(&env, &["get", "--appid", OA]));
    assert_eq!(got["menu"]["errcode"], 0, "{got}");
    assert_eq!(
        got["ticket"],
        token_of(&env, &["get", "--appid", OA, "--ticket", "jsapi"])
    );
    assert_eq!(fetches(&env), fetched, "wechat-api fetched a token");
    assert_eq!(
        env.api.hits(standin::TICKET),
        tickets,
        "wechat-api fetched a ticket"
    );
    assert_eq!(env.api.hits(standin::MENU_GET), 1);
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

#[test]
fn the_wechatpy_adapter_hands_a_rejected_token_back_to_wxtoken() {
    let python = sdk_dir().join("venv/bin/python");
    if skip_without("the wechatpy venv (<target>/sdk/venv)", python.is_file()) {
        return;
    }
    let Some((env, redis)) = published("--format wechatpy") else {
        return;
    };
    let old = token_of(&env, &["get", "--appid", OA]);
    // Something else fetched a token: WeChat now rejects the published one with 40001.
    env.api.revoke(&old);
    let fetched = fetches(&env);

    let mut cmd = Command::new(&python);
    cmd.arg(script("wechatpy_reject.py"))
        .args([env.url(), redis.port.to_string(), OA.into()])
        .env_clear()
        .env("OA_SECRET", OA_SECRET)
        .env("WXTOKEN_BIN", env!("CARGO_BIN_EXE_wxtoken"))
        .env("WXTOKEN_DB", env.store())
        .env("WXTOKEN_KEY_FILE", env.key_file())
        .env("WXTOKEN_API_BASE", env.url())
        .env("NO_PROXY", "127.0.0.1");
    let got = sdk_output(cmd);

    let new = token_of(&env, &["get", "--appid", OA]);
    assert_ne!(new, old);
    assert_eq!(got["before"], old.as_str());
    assert_eq!(
        got["after"],
        new.as_str(),
        "the SDK reads the republished key"
    );
    assert_eq!(
        got["menu"]["errcode"], 0,
        "the retried call succeeded: {got}"
    );
    // One fetch, by wxtoken's get --reject; two business calls (40001, then ok).
    assert_eq!(fetches(&env), fetched + 1);
    assert_eq!(env.api.hits(standin::MENU_GET), 2);
}

// Every proof again on PostgreSQL: the SDKs read what a refresh against it published, and
// `get --reject` replaces the token there.
also_on_postgres!(
    wechatpy_uses_the_published_token_and_tickets_without_fetching,
    wechat_api_callbacks_use_the_published_token_without_fetching,
    the_wechatpy_adapter_hands_a_rejected_token_back_to_wxtoken,
);
