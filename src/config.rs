//! Arguments become a validated configuration here, once: account selectors, API base
//! URLs, the database location. Commands never see raw clap types.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::cli::{
    AccountArgs, AccountCommand, ApiArgs, AuthorizerCommand, Cli, Command, PlatformCommand,
    QuotaCommand, StoreCommand, TargetArgs,
};
use crate::domain::{AccountKey, Api, Credential, Ticket};
use crate::exit::{Exit, fail};
use crate::freshness::Want;
use crate::policy;
use crate::store::Location;
use crate::wechat;

pub struct Config {
    pub db: Location,
    /// `--key-file` / `WXTOKEN_KEY_FILE`; `keyfile` resolves the default.
    pub key_file: Option<std::path::PathBuf>,
    pub quiet: bool,
    pub command: Cmd,
}

/// What to do, with everything already checked.
pub enum Cmd {
    Account(AccountOp),
    Refresh(RefreshConfig),
    Get(GetConfig),
    /// Checked by `cmd::sink`, which also reads the Redis URL from stdin or the environment.
    Sink(crate::cli::SinkCommand),
    /// `accounts` empty: every account (disabled ones too).
    Status {
        json: bool,
        accounts: Vec<AccountKey>,
    },
    Check(CheckConfig),
    Prune {
        keep: i64,
    },
    Metrics,
    Completions(clap_complete::Shell),
    Manpage {
        page: Option<String>,
        list: bool,
    },
    Quota(QuotaConfig),
    Key(crate::cli::KeyCommand),
    /// `store copy`: into this empty store.
    Copy {
        to: Location,
    },
    /// `store grant-reader`: a PostgreSQL role.
    GrantReader {
        role: String,
    },
    /// Checked by `cmd::platform` (identifiers, stdin).
    Platform(PlatformCommand),
    /// Checked by `cmd::authorizer`.
    Authorizer(AuthorizerCommand),
    Receive(crate::cli::ReceiveArgs),
}

/// `status --check`: thresholds in seconds.
pub struct CheckConfig {
    /// Empty: every enabled account.
    pub accounts: Vec<AccountKey>,
    pub warn: i64,
    pub crit: i64,
    /// A suite_ticket's age that warns, and the one that is critical.
    pub ticket_warn: i64,
    pub ticket_crit: i64,
}

/// `quota` (check the named accounts, or every enabled one) or `quota reset`.
pub enum QuotaConfig {
    Check {
        accounts: Vec<AccountKey>,
        json: bool,
        api: ApiConfig,
    },
    Reset {
        key: AccountKey,
        /// Confirmed on the command line: no question asked.
        yes: bool,
        api: ApiConfig,
    },
}

pub enum AccountOp {
    Add {
        key: AccountKey,
        api: Api,
        tickets: Vec<Ticket>,
        secret_env: Option<String>,
    },
    List {
        json: bool,
    },
    Remove(AccountKey),
    Enable(AccountKey),
    Disable(AccountKey),
    SetSecret {
        key: AccountKey,
        secret_env: Option<String>,
    },
    SetTickets {
        key: AccountKey,
        tickets: Vec<Ticket>,
    },
}

/// How to reach WeChat.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub api_base: String,
    pub work_api_base: String,
    pub timeout: Duration,
    /// Seconds a claim lasts before others may take the account over.
    pub claim_ttl: i64,
}

pub struct RefreshConfig {
    /// Empty (and `platforms` empty): every enabled account.
    pub accounts: Vec<AccountKey>,
    /// Platforms named with --component / --suite: each with its tenants.
    pub platforms: Vec<AccountKey>,
    pub jobs: usize,
    pub want: Want,
    /// Also fetch held accounts.
    pub force: bool,
    pub api: ApiConfig,
    /// List what is due, fetch nothing.
    pub dry_run: bool,
    /// NDJSON on stdout.
    pub json: bool,
    /// The node_exporter textfile to write after the run.
    pub metrics_file: Option<PathBuf>,
    /// No warning when there is no enabled account.
    pub allow_empty: bool,
}

pub struct GetConfig {
    pub key: AccountKey,
    /// The platform kind named (`--component`, `--suite`, `--provider-corpid`), if any.
    pub role: Option<Api>,
    pub kind: Credential,
    pub json: bool,
    pub min_ttl: i64,
    /// The token that failed, or `-` for stdin; with the API to fetch a new one.
    pub reject: Option<(String, ApiConfig)>,
}

impl Config {
    pub fn from_cli(cli: Cli) -> Result<Config> {
        let db = location(cli.global.db, "WXTOKEN_DB")?;
        let key_file = cli.global.key_file;
        let command = match cli.command {
            Command::Account(op) => Cmd::Account(account_op(op)?),
            Command::Refresh(a) => {
                let want = match (a.force, a.if_expiring_within) {
                    (true, _) => Want::Always,
                    (false, Some(d)) => Want::ExpiringWithin(seconds("--if-expiring-within", d)?),
                    // The store's newest row id is read when the run starts (engine::refresh).
                    (false, None) => Want::Due { newest_at_start: 0 },
                };
                let mut platforms = Vec::new();
                for id in &a.component {
                    platforms.push(AccountKey::appid(id).map_err(usage)?);
                }
                for id in &a.suite {
                    platforms.push(AccountKey::appid(id).map_err(usage)?);
                }
                Cmd::Refresh(RefreshConfig {
                    accounts: account_keys(&a.appid)?,
                    platforms,
                    jobs: a.jobs,
                    want,
                    force: a.force,
                    api: api(&a.api)?,
                    dry_run: a.dry_run,
                    json: a.json,
                    metrics_file: a.metrics_file,
                    allow_empty: a.allow_empty,
                })
            }
            Command::Get(a) => {
                let (key, role) = target_key(&a.account)?;
                let reject = match a.reject {
                    Some(token) => Some((token, api(&a.api)?)),
                    None => None,
                };
                Cmd::Get(GetConfig {
                    key,
                    role,
                    kind: a.ticket.map_or(Credential::AccessToken, Credential::Ticket),
                    json: a.json,
                    min_ttl: seconds("--min-ttl", a.min_ttl)?,
                    reject,
                })
            }
            Command::Status(a) if a.check => {
                let (warn, crit) = (seconds("--warn", a.warn)?, seconds("--crit", a.crit)?);
                if warn < crit {
                    return Err(usage(format!(
                        "--warn ({}) is below --crit ({}): a token would be CRITICAL before it \
                         ever warned; give --warn the longer time",
                        crate::text::human(warn),
                        crate::text::human(crit)
                    )));
                }
                let ticket_warn = seconds("--ticket-warn", a.ticket_warn)?;
                let ticket_crit = seconds("--ticket-crit", a.ticket_crit)?;
                if ticket_warn > ticket_crit {
                    return Err(usage(format!(
                        "--ticket-warn ({}) is beyond --ticket-crit ({}): a ticket would be \
                         CRITICAL before it ever warned; give --ticket-warn the shorter age",
                        crate::text::human(ticket_warn),
                        crate::text::human(ticket_crit)
                    )));
                }
                Cmd::Check(CheckConfig {
                    accounts: account_keys(&a.appid)?,
                    warn,
                    crit,
                    ticket_warn,
                    ticket_crit,
                })
            }
            Command::Status(a) => Cmd::Status {
                json: a.json,
                accounts: account_keys(&a.appid)?,
            },
            Command::Prune(a) => Cmd::Prune { keep: a.keep },
            Command::Store(StoreCommand::Copy(a)) => match location(Some(a.to), "WXTOKEN_COPY_TO")?
            {
                Location::File { path, .. } if path.as_os_str() == "-" => {
                    return Err(usage("store copy --to: name a file or a URL".into()));
                }
                to => Cmd::Copy { to },
            },
            Command::Store(StoreCommand::GrantReader(a)) => Cmd::GrantReader { role: a.role },
            Command::Sink(c) => Cmd::Sink(c),
            Command::Metrics => Cmd::Metrics,
            Command::Platform(c) => Cmd::Platform(c),
            Command::Authorizer(c) => Cmd::Authorizer(c),
            Command::Receive(a) => Cmd::Receive(a),
            Command::Completions { shell } => Cmd::Completions(shell),
            Command::Manpage { page, list } => Cmd::Manpage { page, list },
            Command::Key(k) => Cmd::Key(k),
            Command::Quota(a) => Cmd::Quota(match a.reset {
                Some(QuotaCommand::Reset(r)) => QuotaConfig::Reset {
                    key: AccountKey::parse(&r.appid).map_err(usage)?,
                    yes: r.yes,
                    api: api(&r.api)?,
                },
                None => QuotaConfig::Check {
                    accounts: account_keys(&a.appid)?,
                    json: a.json,
                    api: api(&a.api)?,
                },
            }),
        };
        Ok(Config {
            db,
            key_file,
            quiet: cli.global.quiet,
            command,
        })
    }
}

/// `--appid` values as refresh takes them: an appid, or CORPID/AGENTID.
fn account_keys(names: &[String]) -> Result<Vec<AccountKey>> {
    names
        .iter()
        .map(|name| AccountKey::parse(name).map_err(usage))
        .collect()
}

fn usage(message: String) -> anyhow::Error {
    fail(Exit::Usage, message)
}

fn account_op(op: AccountCommand) -> Result<AccountOp> {
    Ok(match op {
        AccountCommand::Add(a) => {
            let key = account_key(&a.account)?;
            let api = if a.account.provider_corpid.is_some() {
                Api::Provider
            } else if key.is_wecom() {
                Api::Work
            } else {
                Api::from(a.api)
            };
            // Before the secret is asked for, so nobody types it for nothing.
            check_tickets(api, &a.tickets)?;
            AccountOp::Add {
                key,
                api,
                tickets: a.tickets,
                secret_env: a.secret.secret_env,
            }
        }
        AccountCommand::List(a) => AccountOp::List { json: a.json },
        AccountCommand::Remove(a) => AccountOp::Remove(account_key(&a)?),
        AccountCommand::Enable(a) => AccountOp::Enable(account_key(&a)?),
        AccountCommand::Disable(a) => AccountOp::Disable(account_key(&a)?),
        AccountCommand::SetSecret(a) => AccountOp::SetSecret {
            key: account_key(&a.account)?,
            secret_env: a.secret.secret_env,
        },
        AccountCommand::SetTickets(a) => AccountOp::SetTickets {
            key: account_key(&a.account)?,
            tickets: a.tickets,
        },
    })
}

/// `--appid`, or `--corpid` with `--agentid`, through the one account parser.
fn account_key(args: &AccountArgs) -> Result<AccountKey> {
    match (
        &args.appid,
        &args.corpid,
        &args.agentid,
        &args.provider_corpid,
    ) {
        (Some(appid), None, None, None) => AccountKey::appid(appid),
        (None, Some(corpid), Some(agent), None) => AccountKey::wecom(corpid, agent),
        (None, None, None, Some(corpid)) => AccountKey::appid(corpid),
        _ => Err("name an account with --appid, or with --corpid and --agentid".into()),
    }
    .map_err(usage)
}

/// What `get` reads: an account as `account_key` names it, a platform's token
/// (`--component`, `--suite`, `--provider-corpid`), or a tenant's (`--component` with
/// `--appid`, `--suite` with `--corpid`).
pub fn target_key(t: &TargetArgs) -> Result<(AccountKey, Option<Api>)> {
    let tenant = |id: &str, platform: &str| -> Result<AccountKey, String> {
        AccountKey::appid(platform)?;
        AccountKey::wecom(id, platform)
    };
    let named = (
        &t.appid,
        &t.corpid,
        &t.agentid,
        &t.component,
        &t.suite,
        &t.provider_corpid,
    );
    match named {
        (Some(appid), None, None, None, None, None) => {
            AccountKey::appid(appid).map(|k| (k, None))
        }
        (None, Some(corpid), Some(agent), None, None, None) => {
            AccountKey::wecom(corpid, agent).map(|k| (k, None))
        }
        (None, None, None, Some(c), None, None) => {
            AccountKey::appid(c).map(|k| (k, Some(Api::Component)))
        }
        (Some(appid), None, None, Some(c), None, None) => {
            tenant(appid, c).map(|k| (k, Some(Api::Authorizer)))
        }
        (None, None, None, None, Some(s), None) => {
            AccountKey::appid(s).map(|k| (k, Some(Api::Suite)))
        }
        (None, Some(corpid), None, None, Some(s), None) => {
            tenant(corpid, s).map(|k| (k, Some(Api::Corp)))
        }
        (None, None, None, None, None, Some(p)) => {
            AccountKey::appid(p).map(|k| (k, Some(Api::Provider)))
        }
        _ => Err("name what to read: --appid; --corpid with --agentid; --component [with                   --appid]; --suite [with --corpid]; or --provider-corpid"
            .to_string()),
    }
    .map_err(usage)
}

/// Whether every ticket exists for accounts of this API.
pub fn check_tickets(api: Api, tickets: &[Ticket]) -> Result<()> {
    match tickets.iter().find(|t| !t.fits(api)) {
        Some(t) => Err(usage(format!(
            "a {} account has no {} ticket",
            api.as_str(),
            t.as_str()
        ))),
        None => Ok(()),
    }
}

/// `api` for the commands `cmd::platform` and `cmd::authorizer` check themselves.
pub fn api_config(args: &ApiArgs) -> Result<ApiConfig> {
    api(args)
}

fn api(args: &ApiArgs) -> Result<ApiConfig> {
    check_base("--api-base", &args.api_base).map_err(usage)?;
    check_base("--work-api-base", &args.work_api_base).map_err(usage)?;
    Ok(ApiConfig {
        api_base: args.api_base.clone(),
        work_api_base: args.work_api_base.clone(),
        timeout: Duration::from_secs(args.timeout),
        claim_ttl: args
            .claim_ttl
            .map_or_else(|| policy::claim_ttl(args.timeout), |t| t as i64),
    })
}

/// A duration as signed seconds, or a usage error when it does not fit: a value that
/// wrapped negative would hand out any token.
fn seconds(flag: &str, d: Duration) -> Result<i64> {
    i64::try_from(d.as_secs())
        .ok()
        .filter(|&s| s <= MAX_SECONDS)
        .ok_or_else(|| usage(format!("{flag} is too large (at most {MAX_SECONDS} s)")))
}

/// Longest duration a flag accepts: a century, far beyond any token's life.
const MAX_SECONDS: i64 = 100 * 366 * 86_400;

/// Checks that an API base is a usable http(s) URL, so that a typo fails before any
/// request rather than as three retried network errors. The message never shows a password
/// the URL carries.
fn check_base(name: &str, url: &str) -> Result<(), String> {
    check_base_url(url).map_err(|why| {
        format!(
            "{name} '{}' is not an http:// or https:// URL wxtoken can use: {why}",
            policy::one_line(&redact_base(url), 80)
        )
    })
}

/// Whether a base URL can be used: http(s), a host, a port that fits.
fn check_base_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err("it must start with http:// or https://".into());
    };
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("it contains spaces or control characters".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or("an IPv6 address lacks its ']'")?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("'{addr}' is not an IPv6 address"))?;
            match after {
                "" => (addr, None),
                _ => (addr, Some(after.strip_prefix(':').ok_or("junk after ']'")?)),
            }
        }
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() || host.contains(['[', ']', '@']) {
        return Err("it has no usable host".into());
    }
    // A percent-escape in a host name resolves nowhere (no resolver decodes it): refused
    // here rather than tried three times as a network error.
    if host.contains('%') {
        return Err(format!(
            "the host '{host}' has a percent-escape (write the name as it is)"
        ));
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("port '{port}' is not a number from 1 to 65535"));
    }
    Ok(())
}

/// The base URL with any password replaced by `***`, for messages.
fn redact_base(base: &str) -> String {
    match wechat::userinfo(base) {
        Some(info) => {
            let user = info.split(':').next().unwrap_or("");
            base.replacen(info, &format!("{user}:***"), 1)
        }
        None => base.to_string(),
    }
}

/// `--db`, else `WXTOKEN_DB` (clap reads both), else `~/.local/share/wxtoken/wxtoken.db`.
/// The default depends on HOME only, which cron sets too, so cron and a login shell of the
/// same user agree on it. `env` is the variable that may also hold the value: a URL with
/// a password is accepted only from there, never from argv.
fn location(flag: Option<PathBuf>, env: &str) -> Result<Location> {
    if let Some(path) = flag {
        if path.as_os_str().is_empty() {
            return Err(usage(format!("{} is empty", source_name(env))));
        }
        // Every message names the database: a path with control characters would reach
        // terminals and logs raw (a URL's password is not at stake: it is refused first).
        let shown = path.to_string_lossy();
        if shown.chars().any(char::is_control) && !is_postgres_url(&shown) {
            return Err(usage(format!(
                "{} '{}' has control characters",
                source_name(env),
                crate::text::escaped(&shown)
            )));
        }
        if let Some(url) = path.to_str().filter(|p| is_postgres_url(p)) {
            let from_env = std::env::var_os(env).is_some_and(|v| v == path.as_os_str());
            return postgres_location(url, env, from_env);
        }
        return Ok(Location::File {
            path,
            is_default: false,
        });
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| usage("HOME is not set; pass --db or set WXTOKEN_DB".into()))?;
    Ok(Location::File {
        path: PathBuf::from(home).join(".local/share/wxtoken/wxtoken.db"),
        is_default: true,
    })
}

/// How messages name the option that `env` also sets.
fn source_name(env: &str) -> &'static str {
    match env {
        "WXTOKEN_COPY_TO" => "--to / WXTOKEN_COPY_TO",
        _ => "--db / WXTOKEN_DB",
    }
}

/// `postgres://` and `postgresql://` name a server; anything else is an SQLite path.
fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// The URL completed from libpq's environment (PG* variables, ~/.pgpass). Errors never
/// quote the URL: it may hold a password.
#[cfg(feature = "postgres")]
fn postgres_location(url: &str, env: &str, from_env: bool) -> Result<Location> {
    let config = crate::store::postgres::conf::PgConfig::from_env(url)
        .map_err(|e| usage(format!("{}: {e}", source_name(env))))?;
    if !from_env
        && config
            .password
            .as_ref()
            .is_some_and(|p| p.source == "the URL")
    {
        return Err(usage(format!(
            "a password in a URL on the command line shows in `ps` and shell history; \
             put the URL in {env}, or the password in PGPASSWORD or ~/.pgpass"
        )));
    }
    Ok(Location::Postgres(Box::new(config)))
}

#[cfg(not(feature = "postgres"))]
fn postgres_location(_url: &str, _env: &str, _from_env: bool) -> Result<Location> {
    Err(usage(
        "--db / WXTOKEN_DB is a PostgreSQL URL, but this wxtoken was built without the \
         `postgres` feature; rebuild with default features"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut argv = vec!["wxtoken", "--db", "/nonexistent/x.db"];
        argv.extend_from_slice(args);
        Config::from_cli(Cli::try_parse_from(argv).unwrap())
    }

    #[test]
    fn cli_defaults_are_the_policy() {
        let Cmd::Refresh(r) = parse(&["refresh"]).unwrap().command else {
            panic!("not refresh")
        };
        assert_eq!(r.jobs, policy::DEFAULT_JOBS);
        let Cmd::Prune { keep } = parse(&["prune"]).unwrap().command else {
            panic!("not prune")
        };
        assert_eq!(keep, policy::DEFAULT_KEEP);
    }

    #[test]
    fn refresh_selectors_use_the_same_checks() {
        let Cmd::Refresh(r) = parse(&["refresh", "--appid", "ww1/1000002", "--appid", "wx1"])
            .unwrap()
            .command
        else {
            panic!("not refresh")
        };
        assert_eq!(r.accounts[0], AccountKey::wecom("ww1", "1000002").unwrap());
        assert_eq!(r.accounts[1], AccountKey::appid("wx1").unwrap());
        for bad in ["ww1/", "/1000002", "ww1/a/b"] {
            let err = parse(&["refresh", "--appid", bad]).err().unwrap();
            assert_eq!(crate::exit::of(&err), Exit::Usage, "{bad}");
        }
    }

    #[test]
    fn bases_must_be_http_urls() {
        assert!(check_base("--api-base", "https://api.weixin.qq.com").is_ok());
        assert!(check_base("--api-base", "http://127.0.0.1:8080/").is_ok());
        for bad in [
            "",
            "api.weixin.qq.com",
            "https://",
            "http:///x",
            "https://a b",
            "ftp://x",
            "http://[::1",
            "http://127.0.0.1:70000",
            "http://127.0.0.1:",
            "http://:80",
        ] {
            assert!(check_base("--api-base", bad).is_err(), "{bad}");
        }
        for good in ["http://[::1]:8080", "http://ops:pw@proxy.internal:3128"] {
            assert_eq!(check_base("--api-base", good), Ok(()), "{good}");
        }
        let err = check_base("--api-base", "http://ops:hunter2@[::1").unwrap_err();
        assert!(
            err.contains("ops:***@") && !err.contains("hunter2"),
            "{err}"
        );
        // Plain get never calls WeChat, so a bad base does not stop it.
        assert!(parse(&["get", "--appid", "wx1", "--api-base", "x"]).is_ok());
        assert!(parse(&["get", "--appid", "wx1", "--reject", "T", "--api-base", "x"]).is_err());
    }
}
