//! Command-line arguments. The `///` comments are the help text.

use std::ffi::OsString;
use std::mem::ManuallyDrop;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::{Api, DEFAULT_API_BASE, DEFAULT_WORK_API_BASE, Ticket};

/// Central refresher for WeChat access tokens: one place fetches, everything else reads.
#[derive(Parser, Debug)]
#[command(name = "wxtoken", version, max_term_width = 100)]
#[command(after_help = "Examples:
  wxtoken account add --appid wx1234567890abcdef < secret.txt
  wxtoken refresh                      # from cron, hourly
  TOKEN=$(wxtoken get --appid wx1234567890abcdef) || exit 1

Exit codes: 0 ok, 1 unexpected error, 2 bad arguments, 3 no valid token,
4 a call to WeChat failed, 5 database problem, 6 no such account or sink / already exists,
7 secret key missing or wrong, 8 interrupted by a signal, 9 publishing to a sink failed,
10 a push was refused.")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

// The options every subcommand takes. (A `//` comment: a doc comment on a flattened
// struct would become the program's about text.)
#[derive(Args, Debug)]
pub struct Global {
    /// SQLite database path, or postgres:// URL (its password only in WXTOKEN_DB, PGPASSWORD
    /// or ~/.pgpass) [default: ~/.local/share/wxtoken/wxtoken.db]
    #[arg(
        long,
        global = true,
        env = "WXTOKEN_DB",
        value_name = "PATH|URL",
        help_heading = "Global options"
    )]
    pub db: Option<PathBuf>,

    /// The key file that encrypts the secrets; only commands that store or use a secret
    /// read it [default: $CREDENTIALS_DIRECTORY/wxtoken.key, else ~/.config/wxtoken/key]
    #[arg(
        long,
        global = true,
        env = "WXTOKEN_KEY_FILE",
        value_name = "PATH",
        help_heading = "Global options"
    )]
    pub key_file: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG works too
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,

    /// Only errors on stderr; `refresh` prints no summary when everything succeeded
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,
}

impl Cli {
    /// `Cli::try_parse`, minus tearing down what parsing built: clap's tree and the matches
    /// are left to the process's exit instead of being freed one allocation at a time
    /// (about 100,000 instructions, 5 % of a whole `get`, under callgrind).
    pub fn parse_args() -> Result<Cli, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let args: Vec<OsString> = std::env::args_os().collect();
        if let Some(cli) = Cli::parse_get(&args) {
            return Ok(cli);
        }
        let mut command = ManuallyDrop::new(Cli::command());
        let mut matches = ManuallyDrop::new(command.try_get_matches_from_mut(args)?);
        Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))
    }

    /// `get` is run once per API call by scripts, and building clap's tree of every
    /// subcommand was a fifth of its instructions (callgrind: 320,000 of 1.75 M, with the
    /// parse). Arguments that parse as `get` with a tree of the global options and `get`
    /// alone give the same `Cli` as the whole tree (the same `Args` build both, tested
    /// below); anything else (help, a typo, another subcommand) is `None`, and goes to the
    /// whole tree, so every error and help text is the whole tree's.
    fn parse_get(args: &[OsString]) -> Option<Cli> {
        use clap::FromArgMatches;
        if !args.iter().skip(1).any(|a| a == "get") {
            return None;
        }
        let tree = Global::augment_args(clap::Command::new("wxtoken"))
            .subcommand(GetArgs::augment_args(clap::Command::new("get")))
            .subcommand_required(true);
        let mut tree = ManuallyDrop::new(tree);
        let matches = ManuallyDrop::new(tree.try_get_matches_from_mut(args).ok()?);
        let ("get", get) = matches.subcommand()? else {
            return None;
        };
        Some(Cli {
            global: Global::from_arg_matches(&matches).ok()?,
            command: Command::Get(GetArgs::from_arg_matches(get).ok()?),
        })
    }
}

#[derive(Subcommand, Debug, Clone, Copy)]
pub enum KeyCommand {
    /// Re-encrypt every secret under a new key; the old key file is kept as KEYFILE.old
    #[command(after_help = "Example:
  wxtoken key rotate

Writes the new key next to the old one first, re-encrypts every secret in one
transaction, then leaves only the new key in the key file: an interruption at any
point leaves a database that the key file opens. Safe beside `account add`,
`set-secret` and `sink add`: they read the key file under the lock rotation holds.
Back up the new key file; delete KEYFILE.old once the backups hold the new one.")]
    Rotate,
    /// The key file is lost: forget every encrypted secret, so that new ones can be set
    #[command(after_help = "Example:
  wxtoken key reset --yes
  wxtoken account set-secret --appid wx1234567890abcdef < secret.txt

Only when no key file exists at the path wxtoken uses. Tokens already fetched are
kept and served until they expire. Each account is held until its secret is set
again with `account set-secret` (`account enable` refuses it meanwhile); the first
one creates a new key file. A sink whose
password was forgotten must be removed and added again.")]
    Reset {
        /// Confirm: every encrypted secret is forgotten
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage the accounts whose tokens wxtoken refreshes
    #[command(subcommand)]
    Account(AccountCommand),
    /// Fetch a fresh token for every enabled account (run this from cron)
    #[command(after_help = "Examples:
  wxtoken refresh                        # every enabled account
  wxtoken refresh --appid wx1234567890abcdef
  wxtoken refresh --if-expiring-within 5m   # every 4 minutes: stable and WeCom accounts
  WXTOKEN_API_BASE=http://127.0.0.1:8080 wxtoken refresh   # through a proxy or stand-in
  wxtoken refresh --dry-run              # what is due and why; fetches nothing
  wxtoken refresh --json --metrics-file /var/lib/prometheus/node-exporter/wxtoken.prom

Skips accounts another run fetched after this one started, held after an error
(see status), or being fetched by another run. Prints one line per failed account
and a summary line on stderr (naming at most 10 failed accounts; --json lists all).
Then publishes every valid token to the sinks (wxtoken sink --help).
Exits 0 when every account succeeded, 4 when any failed or is held, 5 when the
database is locked, 8 when stopped by SIGTERM/SIGINT/SIGHUP (a second one: at once),
9 when only publishing to a sink failed (the tokens are stored).")]
    Refresh(RefreshArgs),
    /// Print the newest valid token of an account on stdout, and nothing else
    #[command(after_help = "Examples:
  TOKEN=$(wxtoken get --appid wx1234567890abcdef) || exit 1
  wxtoken get --appid wx1234567890abcdef --min-ttl 5m --json
  wxtoken get --corpid ww1234567890abcdef --agentid 1000002
  TICKET=$(wxtoken get --appid wx1234567890abcdef --ticket jsapi --min-ttl 5m)
  NEW=$(wxtoken get --appid wx1234567890abcdef --reject \"$OLD\")  # after errcode 40001

Exits 3, printing nothing on stdout, when there is no valid token
(unknown account, none fetched yet, expired, or less than --min-ttl left).")]
    Get(GetArgs),
    /// Show every account: its API, its newest token's age and the last attempt's outcome
    #[command(after_help = "Examples:
  wxtoken status
  wxtoken status --json | jq '.accounts[] | select(.last_attempt.outcome != \"ok\")'
  wxtoken status --check --warn 30m --crit 10m   # Nagios/Icinga: exits 0, 1, 2 or 3")]
    Status(StatusArgs),
    /// Show today's token quota as WeChat counts it, next to wxtoken's own fetches; or reset it
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:
  wxtoken quota                                  # every enabled Official Account / Mini Program
  wxtoken quota --appid wx1234567890abcdef --json
  wxtoken quota reset --appid wx1234567890abcdef # asks first; --yes in scripts

Uses each account's stored token and costs no token fetch; an account without a valid
token is skipped. WeCom apps have no such quota and are skipped. When WeChat counts
clearly more fetches than wxtoken made, another program fetches tokens for the appid.
Exits 0 when every account was checked, 3 when one had no valid token, 4 when a call to
WeChat failed."
    )]
    Quota(QuotaArgs),
    /// The key that encrypts the secrets in the database
    #[command(subcommand)]
    Key(KeyCommand),
    /// Delete old token rows and attempts (refresh also does this after every run)
    #[command(
        after_help = "Example:\n  wxtoken prune --keep 24\n\nEvery token still valid is kept, whatever --keep says. Attempts older than 30 days go."
    )]
    Prune(PruneArgs),
    /// Publish tokens where applications already look: Redis in an SDK's format, or a hook
    #[command(subcommand)]
    Sink(SinkCommand),
    /// Print the monitoring metrics (Prometheus text format) that refresh --metrics-file writes
    #[command(after_help = "Example:
  wxtoken metrics | sponge /var/lib/prometheus/node-exporter/wxtoken.prom")]
    Metrics,
    /// Print a shell completion script (for packagers)
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page wxtoken(1), or a subcommand's page, in roff (for packagers)
    #[command(hide = true)]
    Manpage {
        /// The page: wxtoken-refresh, wxtoken-account-add, ...
        page: Option<String>,
        /// List every page's name, one a line
        #[arg(long, conflicts_with = "page")]
        list: bool,
    },
    /// Move the store, or let a PostgreSQL role read tokens
    #[command(subcommand)]
    Store(StoreCommand),
    /// Third-party platforms: Open Platform components and WeCom suites, their tickets and pushes
    #[command(subcommand)]
    Platform(PlatformCommand),
    /// The accounts a platform manages: a component's authorizers, a suite's corps
    #[command(subcommand)]
    Authorizer(AuthorizerCommand),
    /// Serve one HTTP/1.1 request on stdin/stdout: WeChat's push to
    /// /wxtoken/component/APPID or /wxtoken/suite/SUITEID (inetd, systemd Accept=yes)
    #[command(after_help = "Examples:
  systemctl enable --now wxtoken-receive.socket      # the .deb's socket unit, port 8787
  socat TCP-LISTEN:8787,reuseaddr,fork EXEC:'wxtoken receive'

Answers `success` to a valid push before it exchanges any auth code, 403 to a push
that fails its checks, 404 to an unknown path or platform, 400/405/408/411/413 to a
malformed, slow or oversized request. Exits when the connection is done.")]
    Receive(ReceiveArgs),
}

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// Give up on a request that has not arrived whole after this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub read_timeout: u64,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// A platform named on the command line: a component or a suite.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct PlatformArgs {
    /// Open Platform: the third-party platform's component appid
    #[arg(long, value_name = "APPID")]
    pub component: Option<String>,
    /// WeCom: the third-party app's (or 代开发 template's) suite id
    #[arg(long, value_name = "SUITEID")]
    pub suite: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum PlatformCommand {
    /// Add a platform; its secret (component_appsecret, suite_secret) is read from stdin or
    /// --secret-env
    #[command(after_help = "Examples:
  wxtoken platform add --component wx0123456789abcdef < component-secret.txt
  wxtoken platform add --suite ww0123456789abcdef --provider-corpid wwprovider0123 < suite-secret.txt

Its token is fetched by `wxtoken refresh` once a ticket has arrived: by push
(`wxtoken receive`, `wxtoken platform ingest`) or `wxtoken platform set-ticket`.")]
    Add(PlatformAddArgs),
    /// Replace a platform's secret, after it was reset in the console
    SetSecret(PlatformSecretArgs),
    /// Store a pushed ticket (component_verify_ticket, suite_ticket) read from stdin; never
    /// fetches anything. An older ticket never replaces a newer one.
    #[command(after_help = "Example:
  printf '%s\\n' \"$TICKET\" | wxtoken platform set-ticket --component wx0123456789abcdef --create-time 1700000000")]
    SetTicket(SetTicketArgs),
    /// Open Platform: ask WeChat to resume pushing the component_verify_ticket
    /// (api_start_push_ticket)
    StartPush(StartPushArgs),
    /// List platforms: their tickets' age, tokens and tenants
    List(PlatformListArgs),
    /// Remove a platform; refused while it has tenants, unless --with-authorizers
    Remove(PlatformRemoveArgs),
    /// Store how pushes are verified and decrypted: stdin holds two lines, the message
    /// Token, then the 43-character EncodingAESKey
    SetCrypto(PlatformSecretArgs),
    /// Run a command for every decrypted push (the event XML on stdin)
    #[command(after_help = "Example:
  wxtoken platform set-hook --component wx0123456789abcdef --exec '/usr/local/bin/on-event'

The command sees WXTOKEN_EVENT, WXTOKEN_PLATFORM and WXTOKEN_AUTHORIZER in its
environment. Auth codes, permanent codes and refresh tokens are removed from the XML
unless --with-secrets. A failing hook never costs the ticket or the reply.")]
    SetHook(SetHookArgs),
    /// Verify, decrypt and act on one push (the raw POST body on stdin); prints `success`
    Ingest(IngestArgs),
}

#[derive(Args, Debug)]
pub struct PlatformAddArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// WeCom: the provider's corpid (the receiveid of URL checks)
    #[arg(long, value_name = "CORPID", requires = "suite")]
    pub provider_corpid: Option<String>,
    #[command(flatten)]
    pub secret: SecretSource,
}

#[derive(Args, Debug)]
pub struct PlatformSecretArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    #[command(flatten)]
    pub secret: SecretSource,
}

#[derive(Args, Debug)]
pub struct SetTicketArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// When WeChat created the ticket (the push's CreateTime / TimeStamp), Unix seconds;
    /// default: now
    #[arg(long, value_name = "UNIX")]
    pub create_time: Option<i64>,
}

#[derive(Args, Debug)]
pub struct StartPushArgs {
    /// The component appid
    #[arg(long, value_name = "APPID")]
    pub component: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct PlatformListArgs {
    /// One JSON object per platform, one a line
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PlatformRemoveArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// Remove its tenants too, with their refresh tokens or permanent codes
    #[arg(long)]
    pub with_authorizers: bool,
    /// Confirm removing a suite's corps, whose permanent codes cannot be recovered
    #[arg(long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct SetHookArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// The shell command to run (`sh -c`); see --none
    #[arg(long, value_name = "CMD", required_unless_present = "none")]
    pub exec: Option<String>,
    /// Remove the hook
    #[arg(long, conflicts_with = "exec")]
    pub none: bool,
    /// Seconds the hook may run
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=600))]
    pub timeout: i64,
    /// Let the hook see auth codes, permanent codes and refresh tokens
    #[arg(long)]
    pub with_secrets: bool,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// The msg_signature query parameter
    #[arg(long, value_name = "SIG")]
    pub msg_signature: String,
    /// The timestamp query parameter
    #[arg(long, value_name = "TS")]
    pub timestamp: String,
    /// The nonce query parameter
    #[arg(long, value_name = "N")]
    pub nonce: String,
    /// WeCom's URL check: the echostr query parameter; prints it decrypted
    #[arg(long, value_name = "E")]
    pub echostr: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// A tenant named on the command line: an authorizer of a component, or a corp of a suite.
#[derive(Args, Debug, Clone)]
pub struct TenantArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// The authorizer's appid (with --component)
    #[arg(long, requires = "component", conflicts_with = "corpid")]
    pub appid: Option<String>,
    /// The corp's corpid (with --suite)
    #[arg(long, requires = "suite")]
    pub corpid: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AuthorizerCommand {
    /// Onboard a tenant from an authorization code: api_query_auth (component) or
    /// get_permanent_code (suite); stores its credential and first token
    #[command(after_help = "Examples:
  wxtoken authorizer add --component wx0123456789abcdef --auth-code \"$CODE\"
  wxtoken authorizer add --suite ww0123456789abcdef --auth-code -   # the code on stdin

The code is single-use and lives 10 minutes; `-` reads it from stdin.")]
    Add(AuthorizerAddArgs),
    /// Store a tenant's durable credential read from stdin: an authorizer's refresh token,
    /// or a corp's permanent code
    #[command(after_help = "Examples:
  wxtoken authorizer import --component wx0123456789abcdef --appid wxa1b2c3d4e5f6a7b8 < refresh-token.txt
  wxtoken authorizer import --suite ww0123456789abcdef --corpid wwcorp0123 < permanent-code.txt")]
    Import(AuthorizerImportArgs),
    /// Walk every page of api_get_authorizer_list: add new authorizers, store refresh tokens
    /// that differ (never blanks one), report those WeChat no longer lists
    Sync(AuthorizerSyncArgs),
    /// The merchant or corp revoked the authorization: no further requests for it
    Revoke(TenantArgs),
    /// List tenants (credentials never shown)
    List(AuthorizerListArgs),
    /// Remove a tenant and its history; a corp's permanent code cannot be recovered
    Remove(AuthorizerRemoveArgs),
    /// 代开发: replace a corp's app secret from the auth code of a reset_permanent_code push
    Reset(AuthorizerResetArgs),
}

#[derive(Args, Debug)]
pub struct AuthorizerAddArgs {
    #[command(flatten)]
    pub platform: PlatformArgs,
    /// The authorization code (`-` reads it from stdin)
    #[arg(long, value_name = "CODE")]
    pub auth_code: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct AuthorizerImportArgs {
    #[command(flatten)]
    pub tenant: TenantArgs,
    /// WeCom 代开发: the app's agentid; the corp is stored as a WeCom app whose secret is
    /// the permanent code
    #[arg(long, requires = "corpid")]
    pub agentid: Option<String>,
    #[command(flatten)]
    pub secret: SecretSource,
}

#[derive(Args, Debug)]
pub struct AuthorizerSyncArgs {
    /// The component appid
    #[arg(long, value_name = "APPID")]
    pub component: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct AuthorizerListArgs {
    /// Only this component's authorizers
    #[arg(long, value_name = "APPID", conflicts_with = "suite")]
    pub component: Option<String>,
    /// Only this suite's corps
    #[arg(long, value_name = "SUITEID")]
    pub suite: Option<String>,
    /// One JSON object per tenant, one a line
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AuthorizerRemoveArgs {
    #[command(flatten)]
    pub tenant: TenantArgs,
    /// Confirm removing a corp, whose permanent code cannot be recovered
    #[arg(long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct AuthorizerResetArgs {
    /// The 代开发 template's suite id
    #[arg(long, value_name = "SUITEID")]
    pub suite: String,
    /// The AuthCode of the reset_permanent_code push (`-` reads it from stdin)
    #[arg(long, value_name = "CODE")]
    pub auth_code: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy accounts (secrets as stored), holds, each account's newest valid tokens and
    /// tickets, and the sinks into another, empty store
    #[command(after_help = "Examples:
  WXTOKEN_COPY_TO='postgresql://wxtoken@db.example.com/wxtoken' wxtoken store copy
  wxtoken store copy --to 'postgresql://wxtoken@db.example.com/wxtoken?sslmode=verify-full'
  WXTOKEN_DB=postgres://... wxtoken store copy --to /var/lib/wxtoken/wxtoken.db

The target may be a PostgreSQL URL or an SQLite path; a target with any account is
refused. A password goes in WXTOKEN_COPY_TO, PGPASSWORD or ~/.pgpass, never in argv.")]
    Copy(CopyArgs),
    /// PostgreSQL: let ROLE read tokens (the latest_tokens view) and nothing else
    #[command(after_help = "Example:
  psql -c 'CREATE ROLE app_reader LOGIN' && wxtoken store grant-reader app_reader

Prints the GRANT statements it applied. The role can then run `wxtoken get` or select
from latest_tokens; it cannot read any secret, even encrypted, nor write.")]
    GrantReader(GrantReaderArgs),
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The empty store to fill: a postgres:// URL or an SQLite path
    #[arg(long, env = "WXTOKEN_COPY_TO", value_name = "URL|PATH")]
    pub to: PathBuf,
}

#[derive(Args, Debug)]
pub struct GrantReaderArgs {
    /// An existing PostgreSQL role
    #[arg(value_name = "ROLE")]
    pub role: String,
}

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Add an account; the secret is read from stdin (one line) or from --secret-env
    #[command(after_help = "Examples:
  wxtoken account add --appid wx1234567890abcdef            # prompts, without echo
  wxtoken account add --corpid ww1234567890abcdef --agentid 1000002 --ticket agent_config
  printf '%s\\n' \"$SECRET\" | wxtoken account add --appid wx1234567890abcdef --api stable
  WX_SECRET=... wxtoken account add --appid wx1234567890abcdef --secret-env WX_SECRET

The secret is never an argument: argv shows in `ps` and in shell history.")]
    Add(AddArgs),
    /// List accounts (secrets masked)
    #[command(after_help = "Example:\n  wxtoken account list --json")]
    List(ListArgs),
    /// Remove an account and its whole token history
    #[command(after_help = "Example:\n  wxtoken account remove --appid wx1234567890abcdef")]
    Remove(AccountArgs),
    /// Let `refresh` fetch tokens for this account again
    #[command(
        after_help = "Example:\n  wxtoken account enable --appid wx1234567890abcdef

Lifts a hold too. An account whose secret was forgotten with a lost key (`key reset`,
`account list` shows LOST) is refused: set its secret again with `account set-secret`,
which lifts the hold."
    )]
    Enable(AccountArgs),
    /// Stop refreshing this account (its stored tokens stay readable until they expire)
    #[command(after_help = "Example:\n  wxtoken account disable --appid wx1234567890abcdef")]
    Disable(AccountArgs),
    /// Replace an account's secret, after it was reset in the console
    #[command(
        after_help = "Example:\n  wxtoken account set-secret --appid wx1234567890abcdef < new-secret.txt"
    )]
    SetSecret(SecretArgs),
    /// Choose which JS-SDK tickets refresh fetches for this account
    #[command(after_help = "Examples:
  wxtoken account set-tickets --appid wx1234567890abcdef --ticket jsapi --ticket wx_card
  wxtoken account set-tickets --corpid ww1234567890abcdef --agentid 1000002 --ticket agent_config
  wxtoken account set-tickets --appid wx1234567890abcdef          # no tickets")]
    SetTickets(TicketsArgs),
}

/// Which account a command is about.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = true)]
pub struct AccountArgs {
    /// The account's appid (Official Account or Mini Program)
    #[arg(long, conflicts_with_all = ["corpid", "agentid"])]
    pub appid: Option<String>,
    /// WeCom: the corp's corpid (with --agentid)
    #[arg(long, requires = "agentid")]
    pub corpid: Option<String>,
    /// WeCom: the app's agentid, or a name for a module without one, such as `contacts`
    #[arg(long, requires = "corpid")]
    pub agentid: Option<String>,
    /// WeCom: a provider (服务商), by its corpid: its provider token (get_provider_token)
    #[arg(long, value_name = "CORPID", conflicts_with_all = ["appid", "corpid", "agentid"])]
    pub provider_corpid: Option<String>,
}

/// What `get` reads: an account, a platform's token, or a tenant's.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = true)]
pub struct TargetArgs {
    /// The account's appid (Official Account or Mini Program); with --component, that
    /// authorizer's token
    #[arg(long)]
    pub appid: Option<String>,
    /// WeCom: the corp's corpid (with --agentid; with --suite, that corp's token)
    #[arg(long)]
    pub corpid: Option<String>,
    /// WeCom: the app's agentid, or a name for a module without one, such as `contacts`
    #[arg(long)]
    pub agentid: Option<String>,
    /// Open Platform: the component appid; alone, the component token
    #[arg(long, value_name = "APPID")]
    pub component: Option<String>,
    /// WeCom: the suite id; alone, the suite token
    #[arg(long, value_name = "SUITEID")]
    pub suite: Option<String>,
    /// WeCom: the provider's corpid: the provider token
    #[arg(long, value_name = "CORPID")]
    pub provider_corpid: Option<String>,
}

/// Where a secret comes from.
#[derive(Args, Debug)]
pub struct SecretSource {
    /// Read the secret from this environment variable instead of stdin
    #[arg(long, value_name = "VAR")]
    pub secret_env: Option<String>,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub account: AccountArgs,
    /// Token API: `token` is GET /cgi-bin/token, `stable` is POST /cgi-bin/stable_token
    /// (WeCom apps always use /cgi-bin/gettoken)
    #[arg(long, value_enum, default_value_t = ApiArg::Token)]
    pub api: ApiArg,
    /// Also fetch this JS-SDK ticket right after each new token (repeatable):
    /// jsapi or wx_card (Official Accounts), jsapi or agent_config (WeCom)
    #[arg(long = "ticket", value_name = "KIND", value_parser = parse_ticket)]
    pub tickets: Vec<Ticket>,
    #[command(flatten)]
    pub secret: SecretSource,
}

#[derive(Args, Debug)]
pub struct TicketsArgs {
    #[command(flatten)]
    pub account: AccountArgs,
    /// The tickets to fetch from now on (repeatable); none turns tickets off
    #[arg(long = "ticket", value_name = "KIND", value_parser = parse_ticket)]
    pub tickets: Vec<Ticket>,
}

fn parse_ticket(text: &str) -> Result<Ticket, String> {
    Ticket::parse(text)
        .ok_or_else(|| format!("unknown ticket '{text}': use jsapi, wx_card or agent_config"))
}

#[derive(Args, Debug)]
pub struct SecretArgs {
    #[command(flatten)]
    pub account: AccountArgs,
    #[command(flatten)]
    pub secret: SecretSource,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiArg {
    Token,
    Stable,
}

impl From<ApiArg> for Api {
    fn from(a: ApiArg) -> Api {
        match a {
            ApiArg::Token => Api::Token,
            ApiArg::Stable => Api::Stable,
        }
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// One JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// One JSON object on stdout
    #[arg(long, conflicts_with = "check")]
    pub json: bool,
    /// Act as a monitoring plugin (Nagios, Icinga): one line on stdout, exit 0 OK,
    /// 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    #[arg(long)]
    pub check: bool,
    /// With --check: WARNING when an enabled account's newest valid token has less than
    /// this left (at least --crit)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30m", requires = "check")]
    pub warn: Duration,
    /// With --check: CRITICAL when an enabled account's newest valid token has less than
    /// this left, or there is none
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10m", requires = "check")]
    pub crit: Duration,
    /// With --check: WARNING when a WeCom suite's newest suite_ticket is older than this
    /// (WeCom pushes one every 10 minutes; it is valid 30)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "20m", requires = "check")]
    pub ticket_warn: Duration,
    /// With --check: CRITICAL when a WeCom suite's newest suite_ticket is older than this,
    /// or it has none (a component waiting for its ticket is WARNING until its token runs
    /// within --crit)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30m", requires = "check")]
    pub ticket_crit: Duration,
    /// Only this account (repeatable; a WeCom app as CORPID/AGENTID)
    #[arg(long, value_name = "APPID")]
    pub appid: Vec<String>,
}

/// How to reach WeChat: shared by every command that may fetch.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Give up on one request after this many seconds (connect + answer)
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub timeout: u64,
    /// WeChat API base URL (http:// works, for proxies and tests)
    #[arg(long, env = "WXTOKEN_API_BASE", value_name = "URL", default_value = DEFAULT_API_BASE)]
    pub api_base: String,
    /// WeCom API base URL
    #[arg(long, env = "WXTOKEN_WORK_API_BASE", value_name = "URL", default_value = DEFAULT_WORK_API_BASE)]
    pub work_api_base: String,
    /// How long a claim on an account lasts: after that, another process or host may
    /// take the account over [default: 3 x --timeout + 10 s]
    #[arg(long, env = "WXTOKEN_CLAIM_TTL", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub claim_ttl: Option<u64>,
}

// The defaults below are `policy::DEFAULT_JOBS` and `policy::DEFAULT_KEEP`, written out so
// that the CLI types depend on the domain only; a test in config.rs pins them together.

#[derive(Args, Debug)]
pub struct RefreshArgs {
    /// Refresh only this account (repeatable; a WeCom app as CORPID/AGENTID); default: every
    /// enabled account
    #[arg(long, value_name = "APPID")]
    pub appid: Vec<String>,
    /// Refresh only this component and its authorizers (repeatable)
    #[arg(long, value_name = "APPID")]
    pub component: Vec<String>,
    /// Refresh only this suite and its corps (repeatable)
    #[arg(long, value_name = "SUITEID")]
    pub suite: Vec<String>,
    /// Run up to this many fetches at once
    #[arg(long, short = 'j', value_name = "N", default_value_t = 8, value_parser = parse_jobs)]
    pub jobs: usize,
    /// Fetch only accounts whose newest token expires within DURATION (or that have none),
    /// like 5m; for cron every few minutes
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub if_expiring_within: Option<Duration>,
    /// Fetch even accounts that are held after an error, or whose token is fresh
    #[arg(long, conflicts_with = "if_expiring_within")]
    pub force: bool,
    /// List which accounts are due and why, on stdout, without fetching (a fetch rotates
    /// the token) or writing anything
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON line per account and a summary line on stdout, for log shippers
    #[arg(long)]
    pub json: bool,
    /// After the run, write the metrics (as `wxtoken metrics` prints them) to this file,
    /// for node_exporter's textfile collector (a dry run writes none)
    #[arg(long, env = "WXTOKEN_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// No warning when there is no enabled account (for packaged units and cron files,
    /// which run before any account is added)
    #[arg(long)]
    pub allow_empty: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct QuotaArgs {
    #[command(subcommand)]
    pub reset: Option<QuotaCommand>,
    /// Check only this account (repeatable); default: every enabled Official Account and
    /// Mini Program
    #[arg(long, value_name = "APPID")]
    pub appid: Vec<String>,
    /// One JSON object on stdout
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub enum QuotaCommand {
    /// Clear an account's API call counts for today (WeChat allows 10 resets a month)
    #[command(after_help = "Examples:
  wxtoken quota reset --appid wx1234567890abcdef        # asks for confirmation
  wxtoken quota reset --appid wx1234567890abcdef --yes  # from a script

Calls WeChat's clear_quota/v2 with the account's secret (in the request body). It works
when the token quota is exhausted, and releases an account that refresh holds after 45009.
Exits 0 when WeChat confirmed the reset, 2 when it was not confirmed here, 4 when WeChat
refused it (48006: the month's resets are spent).")]
    Reset(ResetArgs),
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    /// The account's appid
    #[arg(long, value_name = "APPID")]
    pub appid: String,
    /// Reset without asking; needed when stdin is not a terminal
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Keep this many newest token rows per account, besides every token still valid
    #[arg(long, value_name = "N", default_value_t = 48, value_parser = clap::value_parser!(i64).range(1..))]
    pub keep: i64,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub account: TargetArgs,
    /// Print one JSON object: appid, access_token, expires_in (seconds left), fetched_at,
    /// expires_at
    #[arg(long)]
    pub json: bool,
    /// Refuse a token with less than this left, like 90s, 5m or 1h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    pub min_ttl: Duration,
    /// Print this JS-SDK ticket instead of the access token: jsapi, wx_card or agent_config
    #[arg(long, value_name = "KIND", value_parser = parse_ticket, conflicts_with = "reject")]
    pub ticket: Option<Ticket>,
    /// This token just failed with 40001/40014/42001: print a newer one, fetching it if
    /// TOKEN is still the newest (`-` reads TOKEN from stdin, keeping it out of `ps`)
    #[arg(long, value_name = "TOKEN")]
    pub reject: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Parses `90s`, `5m`, `1h`, `2d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad =
        || format!("invalid duration '{text}': use a number with s, m, h or d, like 90s, 5m or 1h");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("'{text}' is not a number from 1 to 256")),
    }
}

/// Clap's error as one line for cron mail and logs: its message and the arguments it lists
/// (a missing `--corpid`, say), without the usage block. A stray positional value is not
/// echoed: it is most likely a secret typed where it does not belong.
pub fn usage_error_line(err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg)
        && !arg.starts_with('-')
    {
        return "unexpected value on the command line (not shown: secrets are read from \
                stdin or --secret-env, never from arguments)"
            .to_string();
    }
    let text = err.to_string();
    let mut parts = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() && !line.starts_with("tip:") {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    // A value quoted back may hold control characters: never printed raw.
    crate::text::escaped(&parts.join(" "))
}

/// A name or template printed back in messages and listings: no control characters, which
/// would reach terminals and logs raw.
fn printable(text: &str) -> Result<String, String> {
    if text.chars().any(char::is_control) {
        return Err(format!(
            "'{}' has control characters",
            crate::text::escaped(text)
        ));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `get`-only tree gives exactly what the whole tree gives, and leaves to the
    /// whole tree whatever it would refuse or answer with help.
    #[test]
    fn get_parses_alike_with_the_small_tree() {
        use clap::{CommandFactory, FromArgMatches};
        let whole = |args: &[&str]| {
            Cli::command()
                .try_get_matches_from(args)
                .and_then(|m| Cli::from_arg_matches(&m))
                .map(|cli| format!("{cli:?}"))
        };
        let small = |args: &[&str]| {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            Cli::parse_get(&args).map(|cli| format!("{cli:?}"))
        };
        for args in [
            &["wxtoken", "get", "--appid", "wx1234567890abcdef"][..],
            &[
                "wxtoken",
                "--db",
                "/tmp/x.db",
                "get",
                "--appid",
                "wxa",
                "--json",
            ],
            &[
                "wxtoken",
                "get",
                "--appid",
                "wxa",
                "--db",
                "/tmp/x.db",
                "-q",
            ],
            &[
                "wxtoken",
                "-vv",
                "get",
                "--corpid",
                "ww1",
                "--agentid",
                "1000002",
            ],
            &[
                "wxtoken",
                "get",
                "--appid",
                "wxa",
                "--ticket",
                "jsapi",
                "--min-ttl",
                "5m",
            ],
            &[
                "wxtoken",
                "get",
                "--appid",
                "wxa",
                "--reject",
                "-",
                "--timeout",
                "3",
            ],
            &["wxtoken", "--key-file", "/k", "get", "--appid", "get"],
        ] {
            assert_eq!(small(args), Some(whole(args).unwrap()), "{args:?}");
        }
        for args in [
            &["wxtoken", "get"][..],
            &["wxtoken", "get", "--help"],
            &["wxtoken", "get", "--appid", "wxa", "--bogus"],
            &["wxtoken", "get", "--appid", "wxa", "-q", "-v"],
            &["wxtoken", "-V", "get"],
            &["wxtoken", "status", "--appid", "get"],
            &["wxtoken", "account", "add", "--appid", "get"],
        ] {
            assert_eq!(small(args), None, "{args:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "m", "5x", "-5m", "1.5h", "5 m", "99999999999999999999d"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum SinkCommand {
    /// Add a sink: refresh publishes every valid token to it after each run
    #[command(after_help = "Examples:
  wxtoken sink add cache --redis redis://127.0.0.1:6379/0 --format wxjava
  wxtoken sink add py --redis redis://10.0.0.5/1 --format wechatpy --appid wx1234567890abcdef
  REDIS_URL=redis://app:PASSWORD@10.0.0.5/2 wxtoken sink add php --redis-env REDIS_URL --format easywechat
  printf '%s\\n' \"$REDIS_URL\" | wxtoken sink add node --redis - --format json --key 'wx:{appid}:{kind}'
  wxtoken sink add deploy --exec '/usr/local/bin/push-token' --appid ww1234567890abcdef/1000002
  wxtoken sink add open --redis redis://10.0.0.5/3 --format wechatpy --component wx0a1b2c3d4e5f6a7b --include-refresh-tokens
  wxtoken sink add tp --redis redis://10.0.0.5/4 --format wxjava --suite ww5f6a7b8c9d0e1f2a

Formats: wxjava, silenceper, easywechat, wechatpy, powerwechat (each SDK's own keys and
values; --prefix for its configurable prefix), plain and json (with --key, which may name
{component} and {suite}). A format whose SDK would put a secret, a refresh token or a
permanent code into a key name does not publish those tokens (sink add says which). A URL with a
password (or a pass, password or user parameter) must come from --redis-env or stdin
(--redis -), never from an argument.
A hook gets the token on stdin and WXTOKEN_APPID, WXTOKEN_AGENTID, WXTOKEN_KIND,
WXTOKEN_EXPIRES_AT, WXTOKEN_EXPIRES_IN, WXTOKEN_SINK (and a tenant's WXTOKEN_PLATFORM) in a clean environment (PATH,
HOME, USER, LOGNAME, LANG, LC_ALL, TZ and TMPDIR are kept; nothing else).")]
    Add(Box<SinkAddArgs>),
    /// List sinks (passwords masked)
    #[command(after_help = "Example:\n  wxtoken sink list --json")]
    List(ListArgs),
    /// Remove a sink (what it published stays in Redis until it expires)
    #[command(after_help = "Example:\n  wxtoken sink remove cache")]
    Remove(SinkName),
    /// Publish the current valid tokens to a sink now, and report per key
    #[command(after_help = "Example:\n  wxtoken sink test cache\n\nExits 9 when any write failed.")]
    Test(SinkName),
}

#[derive(Args, Debug)]
pub struct SinkName {
    /// The sink's name
    #[arg(value_parser = printable)]
    pub name: String,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["redis", "redis_env", "exec"])))]
pub struct SinkAddArgs {
    /// A name for the sink: letters, digits, '.', '_' or '-'
    #[arg(value_parser = printable)]
    pub name: String,
    /// Redis URL: redis://[USER@]HOST[:PORT][/DB], rediss:// for TLS, redis+unix:///PATH,
    /// or - to read it from stdin (needed when it has a password or a pass, password or
    /// user parameter)
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Read the Redis URL from this environment variable (for a URL with a password)
    #[arg(long, value_name = "VAR")]
    pub redis_env: Option<String>,
    /// Run this shell command for each new token, the token on its stdin
    #[arg(long, value_name = "COMMAND")]
    pub exec: Option<String>,
    /// Key and value layout in Redis: wxjava, silenceper, easywechat, wechatpy, powerwechat,
    /// plain or json
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// The SDK's key prefix or cache namespace, when the application changed the default
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Key template for plain and json, with {appid}, {agentid} and {kind}
    #[arg(long = "key", value_name = "TEMPLATE", value_parser = printable)]
    pub key_template: Option<String>,
    /// Publish only this account's tokens (repeatable; a WeCom app as CORPID/AGENTID);
    /// default: every account that is neither a platform nor a tenant
    #[arg(long, value_name = "APPID")]
    pub appid: Vec<String>,
    /// Publish this component's token and every authorizer's tokens (repeatable)
    #[arg(long, value_name = "APPID")]
    pub component: Vec<String>,
    /// Publish this suite's token, every corp's tokens, its 代开发 accounts' and its
    /// provider's (repeatable)
    #[arg(long, value_name = "SUITEID")]
    pub suite: Vec<String>,
    /// Also publish authorizers' refresh tokens (wxjava, wechatpy, plain and json; with no
    /// TTL), for an SDK that insists on reading them; permanent codes are never published
    #[arg(long)]
    pub include_refresh_tokens: bool,
    /// Give up on a publish after this many seconds: the whole Redis exchange (connect,
    /// login, every reply), or the command with everything it started (killed)
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=120))]
    pub timeout: i64,
}
