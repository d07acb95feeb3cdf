//! `wxtoken sink`: where refresh publishes tokens (Redis in an SDK's format, or a hook).

use anyhow::Result;
use serde_json::{Value, json};

use super::report::{describe, sink_json};
use super::{Context, emit, stdin_line};
use crate::cli::{SinkAddArgs, SinkCommand};
use crate::domain::{AccountKey, Api, Secret};
use crate::exit::{Exit, fail};
use crate::publish::{self, Mode};
use crate::sink::{self, Format, Selector};
use crate::store::{SinkRow, Store};

pub fn run(ctx: &Context, cmd: SinkCommand) -> Result<Exit> {
    let store = ctx.store()?;
    let store = store.as_ref();
    let (now, quiet) = (ctx.now(), ctx.quiet);
    match cmd {
        SinkCommand::Add(args) => {
            let (row, notes) = new_sink(store, &args, now)?;
            let added = if row.password.is_some() {
                ctx.unlock(store, true)?;
                // Sealed with the key file read under the lock `key rotate` takes.
                let (file, mut added) = (ctx.key_file()?, false);
                store.with_secrets_lock(&mut || {
                    crate::vault::load_for_sealing(store, &file, None)?;
                    added = store.add_sink(&row)?;
                    Ok(())
                })?;
                added
            } else {
                store.add_sink(&row)?
            };
            if !added {
                return Err(fail(
                    Exit::Account,
                    format!(
                        "sink {} already exists; remove it first (wxtoken sink remove)",
                        row.name
                    ),
                ));
            }
            if !quiet {
                eprintln!("added sink {}: {}", row.name, describe(&row));
                for note in notes {
                    eprintln!("wxtoken: note: sink {} {note}", row.name);
                }
            }
            Ok(Exit::Ok)
        }
        SinkCommand::List(args) => {
            let sinks = store.sinks()?;
            let text = if args.json {
                let list: Vec<Value> = sinks.iter().map(|s| sink_json(s, now)).collect();
                format!("{}\n", json!({ "sinks": list }))
            } else if sinks.is_empty() {
                String::new()
            } else {
                sinks
                    .iter()
                    .map(|s| format!("{}  {}\n", s.name, describe(s)))
                    .collect()
            };
            if sinks.is_empty() && !args.json && !quiet {
                eprintln!("no sinks; add one with `wxtoken sink add`");
            }
            for s in sinks
                .iter()
                .filter(|s| s.kind == "redis" && sink::has_clear_credentials(&s.target))
            {
                eprintln!(
                    "wxtoken: warning: sink {} keeps a Redis credential in clear text in the \
                     store (added by an older version): remove it and add it again with \
                     --redis - to have it sealed",
                    s.name
                );
            }
            emit(&text)?;
            Ok(Exit::Ok)
        }
        SinkCommand::Remove(args) => {
            if !store.remove_sink(&args.name)? {
                return Err(no_such_sink(&args.name));
            }
            if !quiet {
                eprintln!("removed sink {}", args.name);
            }
            Ok(Exit::Ok)
        }
        SinkCommand::Test(args) => {
            ctx.unlock(store, false)?;
            let sink = store
                .sink(&args.name)?
                .ok_or_else(|| no_such_sink(&args.name))?;
            let accounts = store.accounts()?;
            let report = publish::publish_sink(store, &sink, &accounts, Mode::Test, now)?;
            let mut text: String = report.lines.iter().map(|l| format!("{l}\n")).collect();
            if report.lines.is_empty() && report.result.ok {
                text = String::new();
                eprintln!("sink {}: no valid token to publish", sink.name);
            }
            emit(&text)?;
            if publish::report_failures(std::slice::from_ref(&report), "").is_empty() {
                Ok(Exit::Ok)
            } else {
                Ok(Exit::PublishFailed)
            }
        }
    }
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    fail(Exit::Usage, message)
}

fn no_such_sink(name: &str) -> anyhow::Error {
    fail(
        Exit::Account,
        format!("no such sink {name} (see wxtoken sink list)"),
    )
}

/// Checks the arguments and builds the row to store.
fn new_sink(store: &dyn Store, args: &SinkAddArgs, now: i64) -> Result<(SinkRow, Vec<String>)> {
    let name = &args.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(usage(format!(
            "sink name '{}' is not valid: use up to 64 letters, digits, '.', '_' or '-'",
            crate::policy::one_line(name, 40)
        )));
    }
    // The same selectors as `refresh --appid`, stored the way `AccountKey` prints them,
    // then the platforms, each with all its tenants; `kinds` is what they cover.
    let mut accounts = Vec::new();
    let mut kinds = Vec::new();
    let mut components = 0;
    for selector in &args.appid {
        let key = AccountKey::parse(selector).map_err(usage)?;
        let account = store.require_account(&key)?;
        accounts.push(key.to_string());
        kinds.push(account.api);
        components += usize::from(account.api == Api::Component);
    }
    for id in &args.component {
        platform(store, id, Api::Component)?;
        accounts.push(Selector::Component(id.clone()).stored());
        kinds.extend([Api::Component, Api::Authorizer]);
        components += 1;
    }
    for id in &args.suite {
        let suite = platform(store, id, Api::Suite)?;
        accounts.push(Selector::Suite(id.clone()).stored());
        kinds.extend([Api::Suite, Api::Corp]);
        if suite.receiver.is_some() {
            kinds.push(Api::Provider);
        }
    }
    let kinds: Vec<Api> = kinds
        .iter()
        .enumerate()
        .filter(|(i, k)| !kinds[..*i].contains(k))
        .map(|(_, k)| *k)
        .collect();
    if args.include_refresh_tokens && !kinds.contains(&Api::Authorizer) {
        return Err(usage(
            "--include-refresh-tokens publishes Open Platform authorizers' refresh tokens: \
             select a component (--component) or an authorizer; permanent codes are never \
             published",
        ));
    }
    let mut row = SinkRow {
        id: 0,
        name: name.clone(),
        kind: "redis".into(),
        target: String::new(),
        password: None,
        format: None,
        prefix: None,
        key_template: None,
        accounts,
        refresh_tokens: args.include_refresh_tokens,
        timeout: args.timeout,
        created_at: now,
        last: None,
    };
    if let Some(command) = &args.exec {
        if args.format.is_some() || args.prefix.is_some() || args.key_template.is_some() {
            return Err(usage(
                "--format, --prefix and --key are for --redis sinks, not --exec",
            ));
        }
        if command.trim().is_empty() {
            return Err(usage("--exec needs a command"));
        }
        if args.include_refresh_tokens {
            return Err(usage(
                "--include-refresh-tokens is for Redis sinks: a hook gets access tokens and \
                 tickets only",
            ));
        }
        row.kind = "exec".into();
        row.target = command.clone();
        return Ok((row, Vec::new()));
    }
    let url = redis_url(args)?;
    let format = args.format.as_deref().ok_or_else(|| {
        usage("--redis needs --format: wxjava, silenceper, easywechat, wechatpy, powerwechat, plain or json")
    })?;
    let format = Format::parse(format).ok_or_else(|| {
        usage(format!(
            "unknown format '{}': use wxjava, silenceper, easywechat, wechatpy, powerwechat, plain or json",
            crate::policy::one_line(format, 40)
        ))
    })?;
    match (format.templated(), &args.key_template, &args.prefix) {
        (true, None, _) => {
            return Err(usage(format!(
                "--format {format} needs --key, like --key 'wx:{{appid}}:{{kind}}'"
            )));
        }
        (true, Some(template), None) => {
            sink::check_template(template).map_err(usage)?;
            // One fixed key for several accounts would make them overwrite each other.
            if !template.contains("{appid}")
                && (args.appid.len() != 1 || !args.component.is_empty() || !args.suite.is_empty())
            {
                return Err(usage(
                    "--key without {appid} needs exactly one --appid: several accounts would share the key",
                ));
            }
            if args.include_refresh_tokens && !template.contains("{kind}") {
                return Err(usage(
                    "--include-refresh-tokens needs {kind} in --key: the refresh token goes \
                     under {kind} = refresh_token, beside the access token",
                ));
            }
        }
        (true, Some(_), Some(_)) => {
            return Err(usage("--prefix is for the SDK formats; put it in --key"));
        }
        (false, Some(_), _) => {
            return Err(usage(format!(
                "--key is for plain and json; {format} uses its SDK's keys (change them with --prefix)"
            )));
        }
        (false, None, _) => {}
    }
    if let Some(prefix) = &args.prefix
        && prefix.contains(char::is_whitespace)
    {
        return Err(usage("--prefix must not contain spaces"));
    }
    if args.include_refresh_tokens && !sink::reads_refresh_tokens(format) {
        return Err(usage(format!(
            "--format {format} does not read refresh tokens from Redis; \
             --include-refresh-tokens is for wxjava, wechatpy, plain and json"
        )));
    }
    if format == Format::Wechatpy && components > 1 {
        return Err(usage(
            "wechatpy keys the component token without the component's appid \
             (component_access_token): one component per wechatpy sink; add one sink per \
             component, each with its own --prefix",
        ));
    }
    let notes = refusals(format, &kinds)?;
    // Check the URL the way the Redis client will read it, before storing it.
    redis::Client::open(url.url.as_str())
        .map_err(|e| usage(format!("the Redis URL is not valid: {e}")))?;
    row.password = url.secret().map(Secret::new);
    row.target = url.url;
    row.format = Some(format.as_str().to_string());
    row.prefix = args.prefix.clone();
    row.key_template = args.key_template.clone();
    Ok((row, notes))
}

/// The platform account `id` of kind `api` (a component or a suite), or why not.
fn platform(store: &dyn Store, id: &str, api: Api) -> Result<crate::domain::Account> {
    let what = if api == Api::Component {
        "component"
    } else {
        "suite"
    };
    let key = AccountKey::appid(id).map_err(usage)?;
    match store.account(&key)? {
        Some(account) if account.api == api => Ok(account),
        _ => Err(fail(
            Exit::Account,
            format!(
                "no such {what} {} (see wxtoken platform list)",
                crate::policy::one_line(id, 40)
            ),
        )),
    }
}

/// The tokens of the selection that `format` refuses to publish (its SDK would name the
/// key with a secret or a durable credential, or has no storage for them): an error when
/// that is every token selected, else one note per kind for `sink add` to print.
fn refusals(format: Format, kinds: &[Api]) -> Result<Vec<String>> {
    let refused: Vec<(Api, &str)> = kinds
        .iter()
        .filter_map(|&api| sink::refused(format, api).map(|why| (api, why)))
        .collect();
    let lines: Vec<String> = refused
        .iter()
        .map(|(api, why)| format!("{}: {why}", sink::api_noun(*api)))
        .collect();
    if !kinds.is_empty() && refused.len() == kinds.len() {
        return Err(usage(format!(
            "--format {format} would publish none of the selected tokens: {}; see \
             docs/integrations/ for configuring that SDK instead",
            lines.join("; ")
        )));
    }
    Ok(lines
        .into_iter()
        .map(|l| format!("does not publish {l}"))
        .collect())
}

/// The URL from --redis, --redis-env or stdin, with its credentials split off. A credential
/// in an argument is refused: argv shows in `ps` and in shell history.
fn redis_url(args: &SinkAddArgs) -> Result<sink::RedisUrl> {
    let (text, from_argv) = match (&args.redis, &args.redis_env) {
        (Some(url), _) if url == "-" => (stdin_line("the Redis URL")?.trim().to_string(), false),
        (Some(url), _) => (url.clone(), true),
        (None, Some(var)) => {
            let value = std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| usage(format!("environment variable {var} is not set or empty")))?;
            (value.trim().to_string(), false)
        }
        (None, None) => return Err(usage("name a target with --redis, --redis-env or --exec")),
    };
    // The error never repeats the URL: it may hold the password.
    let url = sink::split_redis_url(&text).map_err(usage)?;
    if from_argv && (url.password.is_some() || url.user.is_some()) {
        return Err(usage(
            "a Redis URL with a password (or a pass, password or user parameter) must not be an \
             argument (ps and shell history show it); pass it with --redis-env VAR or on stdin \
             with --redis -",
        ));
    }
    Ok(url)
}
