//! The WeChat client: the only module that speaks HTTP. Answers are typed: a token, or a
//! `Failure` that knows whether it is worth retrying. The secret never appears in anything
//! this module returns.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::domain::{Api, Failure, Fetched, Outcome, Secret, Ticket};
use crate::policy::{self, MAX_TRIES};
use crate::secret;

/// WeChat's documented lifetime of tokens and tickets. A reply that claims more is not
/// believed: serving a token past its real end is the one thing wxtoken must not do.
pub const MAX_EXPIRES_IN: i64 = 7200;

/// One request and what came of it.
pub(crate) struct Try<T> {
    result: Result<T, Failure>,
    /// The request may have reached the server (it was not refused before sending).
    reached: bool,
    /// WeChat's `Date` header minus the local clock, in seconds.
    clock_offset: Option<i64>,
}

/// A call that does not tell whether it reached the server counts as one that did.
impl<T> From<Result<T, Failure>> for Try<T> {
    fn from(result: Result<T, Failure>) -> Try<T> {
        Try {
            result,
            reached: true,
            clock_offset: None,
        }
    }
}

mod platform;
mod quota;
pub use platform::{Authorized, PermanentCode};
pub use quota::Quota;

/// A token reply is well under 1 KiB; anything past this is not WeChat talking.
const BODY_CAP: u64 = 16 * 1024;

impl Failure {
    /// Worth retrying within the same run.
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::WeChat { errcode, .. } => policy::errcode_is_transient(*errcode),
            Failure::Http { status } => policy::http_status_is_transient(*status),
            Failure::Transport(_) | Failure::NotJson(_) => true,
            Failure::Invalid(_) => false,
        }
    }

    /// Short label for summaries: the errcode, the HTTP status, or the class.
    pub fn label(&self) -> String {
        match self {
            Failure::WeChat { errcode, .. } => errcode.to_string(),
            Failure::Http { status } => format!("http {status}"),
            Failure::Transport(_) => "network".to_string(),
            Failure::NotJson(_) => "not json".to_string(),
            Failure::Invalid(_) => "invalid reply".to_string(),
        }
    }
}

impl Failure {
    /// The message for a ticket fetch, whose errcodes mean something else (40001 there is
    /// about the token, not the secret).
    pub fn for_ticket(&self) -> String {
        self.explained(policy::ticket_hint)
    }

    /// The message for a token call of an account of `api`: the platform kinds' codes
    /// mean their own things.
    pub fn for_api(&self, api: Api) -> String {
        if !api.is_platform_kind() {
            return self.to_string();
        }
        self.explained(|code, msg| {
            policy::platform_hint(api, code, msg).or_else(|| policy::hint(code, msg))
        })
    }

    /// The message for a call whose errcodes `hint` explains (a ticket, a quota tool).
    pub fn explained(&self, hint: impl Fn(i64, &str) -> Option<String>) -> String {
        match self {
            Failure::WeChat { errcode, errmsg } => match hint(*errcode, errmsg) {
                Some(hint) => format!("WeChat errcode {errcode} ({errmsg}): {hint}"),
                None => format!("WeChat errcode {errcode} ({errmsg})"),
            },
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::WeChat { errcode, errmsg } => {
                write!(f, "WeChat errcode {errcode} ({errmsg})")?;
                match policy::hint(*errcode, errmsg) {
                    Some(hint) => write!(f, ": {hint}"),
                    None => Ok(()),
                }
            }
            Failure::Http {
                status: status @ 300..=399,
            } => write!(
                f,
                "HTTP status {status} from the API: a redirect, which wxtoken does not follow \
                 (it would carry the secret elsewhere); check --api-base"
            ),
            Failure::Http { status } => write!(f, "HTTP status {status} from the API"),
            Failure::Transport(what) => write!(f, "network error: {what}"),
            Failure::NotJson(what) => write!(f, "reply is not a WeChat answer: {what}"),
            Failure::Invalid(what) => write!(f, "invalid reply: {what}"),
        }
    }
}

/// What identifies an account to WeChat.
pub struct Credentials<'a> {
    pub api: Api,
    pub appid: &'a str,
    pub secret: &'a Secret,
}

pub struct Client {
    agent: ureq::Agent,
    api_base: String,
    work_api_base: String,
    /// Credentials in the base URLs, scrubbed from failures like a secret.
    hidden: Vec<Secret>,
    retry_base: Duration,
    timeout: Duration,
}

impl Client {
    pub fn new(api_base: &str, work_api_base: &str, timeout: Duration) -> Client {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .http_status_as_error(false)
            // A redirect would carry the secret in the query string to another host.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("wxtoken/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(64)
            // ureq's default buffers are 128 KiB each way per connection, resident once
            // touched; a token exchange needs a few hundred bytes of headers each way.
            .input_buffer_size(16 * 1024)
            .output_buffer_size(4 * 1024)
            .build();
        // The default chain (TCP, a proxy's CONNECT, TLS), then the marker that notes when
        // a request's first byte goes out.
        use ureq::unversioned::transport::Connector;
        let connector = ureq::unversioned::transport::DefaultConnector::new().chain(sent::Marker);
        let resolver = ureq::unversioned::resolver::DefaultResolver::default();
        Client {
            agent: ureq::Agent::with_parts(config, connector, resolver),
            api_base: api_base.trim_end_matches('/').to_string(),
            work_api_base: work_api_base.trim_end_matches('/').to_string(),
            hidden: [api_base, work_api_base]
                .into_iter()
                .filter_map(userinfo)
                .map(|info| Secret::new(info.to_string()))
                .collect(),
            retry_base: Duration::from_millis(200),
            timeout,
        }
    }

    /// How long one request may take; claims last a few of these.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Fetches a token, retrying transient failures with backoff and jitter.
    /// `force` asks a `stable` account for a brand-new token (`force_refresh: true`).
    pub fn fetch_token(&self, creds: &Credentials, force: bool) -> Outcome {
        self.with_retries(&[creds.secret], || self.token_once(creds, force))
    }

    /// Fetches a JS-SDK ticket with `token`, retrying transient failures.
    pub fn fetch_ticket(&self, api: Api, ticket: Ticket, token: &str) -> Outcome {
        // The token is in the query string; keep it out of error texts like a secret.
        let token_secret = Secret::new(token.to_string());
        self.with_retries(&[&token_secret], || {
            let request = match (api.is_wecom(), ticket) {
                (true, Ticket::AgentConfig) => self
                    .agent
                    .get(format!("{}/cgi-bin/ticket/get", self.work_api_base))
                    .query("type", "agent_config"),
                (true, _) => self
                    .agent
                    .get(format!("{}/cgi-bin/get_jsapi_ticket", self.work_api_base)),
                (_, kind) => self
                    .agent
                    .get(format!("{}/cgi-bin/ticket/getticket", self.api_base))
                    .query("type", kind.as_str()),
            };
            let base = if api.is_wecom() {
                &self.work_api_base
            } else {
                &self.api_base
            };
            let response = request.query("access_token", token).call();
            exchange(base, response, "ticket")
        })
    }

    fn with_retries<T, R: Into<Try<T>>>(
        &self,
        secrets: &[&Secret],
        mut once: impl FnMut() -> R,
    ) -> Outcome<T> {
        let started = Instant::now();
        let started_at = unix_now();
        let mut tries = 0;
        let mut unsure = false;
        loop {
            tries += 1;
            let sent_at = unix_now();
            sent::reset();
            let attempt: Try<T> = once().into();
            let result = attempt.result.map_err(|f| {
                let hidden = secrets.iter().copied().chain(&self.hidden);
                scrub_failure(f, &hidden.collect::<Vec<_>>())
            });
            // An errcode is WeChat saying it issued nothing; anything else that got there
            // leaves the question open.
            unsure |= attempt.reached && !matches!(result, Ok(_) | Err(Failure::WeChat { .. }));
            match &result {
                // After a stop signal no new request goes out: the run is ending.
                Err(failure)
                    if failure.is_transient()
                        && tries < MAX_TRIES
                        && crate::signals::caught().is_none() =>
                {
                    let wait = policy::backoff(self.retry_base, tries, jitter());
                    log::debug!("try {tries} failed ({failure}); retrying in {wait:?}");
                    std::thread::sleep(wait);
                }
                _ => {
                    return Outcome {
                        result,
                        tries,
                        sent_at,
                        started_at,
                        duration_ms: started.elapsed().as_millis() as i64,
                        unsure,
                        clock_offset: attempt.clock_offset,
                    };
                }
            }
        }
    }

    fn token_once(&self, creds: &Credentials, force: bool) -> Try<Fetched> {
        let secret = creds.secret.expose();
        let response = match creds.api {
            Api::Token => self
                .agent
                .get(format!("{}/cgi-bin/token", self.api_base))
                .query("grant_type", "client_credential")
                .query("appid", creds.appid)
                .query("secret", secret)
                .call(),
            Api::Stable => {
                let body = serde_json::json!({
                    "grant_type": "client_credential",
                    "appid": creds.appid,
                    "secret": secret,
                    "force_refresh": force,
                });
                self.agent
                    .post(format!("{}/cgi-bin/stable_token", self.api_base))
                    .header("Content-Type", "application/json")
                    .send(body.to_string())
            }
            Api::Work => self
                .agent
                .get(format!("{}/cgi-bin/gettoken", self.work_api_base))
                .query("corpid", creds.appid)
                .query("corpsecret", secret)
                .call(),
            Api::Provider => {
                let body = serde_json::json!({ "corpid": creds.appid, "provider_secret": secret });
                self.agent
                    .post(format!(
                        "{}/cgi-bin/service/get_provider_token",
                        self.work_api_base
                    ))
                    .header("Content-Type", "application/json")
                    .send(body.to_string())
            }
            // Platforms and tenants need more than a secret: `fetch_platform_token`,
            // `fetch_tenant_token`.
            api => {
                return Err(Failure::Invalid(format!(
                    "a {} token is not fetched with a secret alone",
                    api.noun()
                )))
                .into();
            }
        };
        let (base, field) = match creds.api {
            Api::Provider => (&self.work_api_base, "provider_access_token"),
            Api::Work => (&self.work_api_base, "access_token"),
            _ => (&self.api_base, "access_token"),
        };
        exchange(base, response, field)
    }
}

/// Turns one HTTP exchange into a `Try`: the parsed reply, whether the request may have
/// reached the server, and how far WeChat's clock is from ours.
fn exchange(
    base: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    field: &str,
) -> Try<Fetched> {
    // Only what failed after the request began to leave may have reached WeChat: not a
    // name that did not resolve, a refused connection, nor a TLS handshake that failed.
    let reached =
        response.is_ok() || (sent::began() && !matches!(&response, Err(e) if never_sent(e)));
    let clock_offset = response.as_ref().ok().and_then(|r| {
        let date = r.headers().get("date")?.to_str().ok()?;
        let at = chrono::DateTime::parse_from_rfc2822(date).ok()?;
        Some(at.timestamp() - unix_now())
    });
    Try {
        result: read_body(base, response).and_then(|body| parse_reply(body, field)),
        reached,
        clock_offset,
    }
}

/// Whether this thread's request began to leave: set by the outermost transport (above
/// TLS) when it first writes, so the TCP connect, a proxy's CONNECT and the TLS handshake
/// never set it. A request runs on its caller's thread, so the flag is per thread.
mod sent {
    use std::cell::Cell;

    use ureq::unversioned::transport::{
        Buffers, ConnectionDetails, Connector, NextTimeout, Transport,
    };

    thread_local! {
        static BEGAN: Cell<bool> = const { Cell::new(false) };
    }

    /// Before a request.
    pub fn reset() {
        BEGAN.with(|b| b.set(false));
    }

    /// After it: whether any of its bytes were handed to the connection.
    pub fn began() -> bool {
        BEGAN.with(Cell::get)
    }

    /// Wraps the transport that the rest of the chain made.
    #[derive(Debug)]
    pub struct Marker;

    impl<In: Transport> Connector<In> for Marker {
        type Out = Marked<In>;

        fn connect(
            &self,
            _: &ConnectionDetails,
            chained: Option<In>,
        ) -> Result<Option<Marked<In>>, ureq::Error> {
            Ok(chained.map(Marked))
        }
    }

    #[derive(Debug)]
    pub struct Marked<T>(T);

    impl<T: Transport> Transport for Marked<T> {
        fn buffers(&mut self) -> &mut dyn Buffers {
            self.0.buffers()
        }

        fn transmit_output(
            &mut self,
            amount: usize,
            timeout: NextTimeout,
        ) -> Result<(), ureq::Error> {
            // Before writing: from the first byte on, the server may have the request.
            BEGAN.with(|b| b.set(true));
            self.0.transmit_output(amount, timeout)
        }

        fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
            self.0.await_input(timeout)
        }

        fn is_open(&mut self) -> bool {
            self.0.is_open()
        }

        fn is_tls(&self) -> bool {
            self.0.is_tls()
        }
    }
}

/// Errors that happen before a request leaves: nothing can have been issued.
fn never_sent(err: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    use ureq::Timeout;
    match err {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::InvalidProxyUrl
        | ureq::Error::ConnectProxyFailed(_)
        | ureq::Error::Timeout(Timeout::Resolve | Timeout::Connect) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::AddrNotAvailable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::HostUnreachable
        ),
        _ => false,
    }
}

/// The host part of a base URL, without any `user:password@` in it, for messages.
fn display_host(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// The `user:password` of a base URL, if it has one: kept out of every message.
pub fn userinfo(base: &str) -> Option<&str> {
    let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map(|(info, _)| info)
        .filter(|i| !i.is_empty())
}

fn read_body(
    base: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<String, Failure> {
    read_body_capped(base, response, BODY_CAP)
}

/// `read_body` for a reply that may be larger than a token's (a page of authorizers).
fn read_body_capped(
    base: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    cap: u64,
) -> Result<String, Failure> {
    let host = display_host(base);
    let transport = |err: ureq::Error| {
        Failure::Transport(match err {
            ureq::Error::Timeout(_) => format!("{host}: timed out"),
            other => format!("{host}: {other}"),
        })
    };
    let mut response = response.map_err(transport)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(Failure::Http { status });
    }
    response
        .body_mut()
        .with_config()
        .limit(cap)
        .read_to_string()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => {
                Failure::NotJson(format!("larger than {} KiB", cap / 1024))
            }
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                if io.to_string().contains("limit") {
                    Failure::NotJson(format!("larger than {} KiB", cap / 1024))
                } else {
                    Failure::NotJson("not UTF-8".to_string())
                }
            }
            other => transport(other),
        })
}

/// The fields WeChat may send. Unknown fields are ignored; known ones must have the right
/// type, or the reply is rejected.
#[derive(Deserialize)]
struct Reply {
    errcode: Option<i64>,
    errmsg: Option<String>,
    access_token: Option<String>,
    ticket: Option<String>,
    expires_in: Option<i64>,
    component_access_token: Option<String>,
    authorizer_access_token: Option<String>,
    authorizer_refresh_token: Option<String>,
    suite_access_token: Option<String>,
    provider_access_token: Option<String>,
}

/// Strict parsing of a reply: a WeChat error, or a well-formed `field` with `expires_in`.
fn parse_reply(body: String, field: &str) -> Result<Fetched, Failure> {
    let reply: Reply = decode(body)?;
    check_errcode(reply.errcode, reply.errmsg)?;
    // A refresh token WeChat hands back with an authorizer token: kept only when it is a
    // plausible credential (never an empty one: it must never replace a stored one).
    let renewed = reply
        .authorizer_refresh_token
        .filter(|t| !t.is_empty() && t.len() <= 512 && t.bytes().all(|b| b.is_ascii_graphic()))
        .map(Secret::new);
    let value = match field {
        "ticket" => reply.ticket,
        "component_access_token" => reply.component_access_token,
        "authorizer_access_token" => reply.authorizer_access_token,
        "suite_access_token" => reply.suite_access_token,
        "provider_access_token" => reply.provider_access_token,
        _ => reply.access_token,
    };
    let token = value.ok_or_else(|| Failure::Invalid(format!("no {field} in the reply")))?;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Failure::Invalid(format!(
            "{field} is empty or has characters no token has"
        )));
    }
    let expires_in = reply
        .expires_in
        .ok_or_else(|| Failure::Invalid("no expires_in in the reply".to_string()))?;
    if !(1..=MAX_EXPIRES_IN).contains(&expires_in) {
        return Err(Failure::Invalid(format!(
            "expires_in {expires_in} is out of range (WeChat's tokens live at most {MAX_EXPIRES_IN} s)"
        )));
    }
    Ok(Fetched {
        token,
        expires_in,
        renewed,
    })
}

/// A reply body as JSON of type `T`. A body that is not JSON at all (a proxy's error page)
/// is `NotJson`, which is transient; JSON of the wrong shape is `Invalid`, which is not.
fn decode<T: serde::de::DeserializeOwned>(body: String) -> Result<T, Failure> {
    if body.trim().is_empty() {
        return Err(Failure::NotJson("empty body".to_string()));
    }
    // Never the body's own words: an upstream that is not WeChat may echo anything,
    // the secret in any disguise included. A fixed description, its shape and size.
    match serde_json::from_str(&body) {
        Ok(reply) => Ok(reply),
        Err(e) if e.is_syntax() || e.is_eof() => {
            Err(Failure::NotJson(if body.trim_start().starts_with('<') {
                format!("an HTML page of {} bytes", body.len())
            } else {
                format!("{} bytes that are not JSON", body.len())
            }))
        }
        // serde's message quotes the offending value.
        Err(e) => Err(Failure::Invalid(format!(
            "JSON of another shape than WeChat's (line {}, column {})",
            e.line(),
            e.column()
        ))),
    }
}

/// A non-zero errcode as a failure; no errcode or 0 is fine.
fn check_errcode(errcode: Option<i64>, errmsg: Option<String>) -> Result<(), Failure> {
    match errcode.filter(|&c| c != 0) {
        Some(errcode) => Err(Failure::WeChat {
            errcode,
            errmsg: errmsg.unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

/// Makes a failure's text safe to show: the secret scrubbed out first (library errors can
/// quote the request URL, and a hostile reply can quote anything), then one bounded line.
/// In that order: a text cut first could keep a piece of the secret that no longer matches.
fn scrub_failure(failure: Failure, secrets: &[&Secret]) -> Failure {
    let clean = |text: &str, max| {
        let scrubbed = (secrets.iter()).fold(text.to_string(), |t, s| secret::scrub(&t, s));
        if secrets.iter().any(|s| quotes_secret(&scrubbed, s.expose())) {
            return "(withheld: it quoted the secret, changed or encoded)".to_string();
        }
        policy::one_line(&scrubbed, max)
    };
    match failure {
        Failure::WeChat { errcode, errmsg } => Failure::WeChat {
            errcode,
            errmsg: clean(&errmsg, 200),
        },
        Failure::Transport(s) => Failure::Transport(clean(&s, 200)),
        Failure::NotJson(s) => Failure::NotJson(clean(&s, 60)),
        Failure::Invalid(s) => Failure::Invalid(clean(&s, 120)),
        http @ Failure::Http { .. } => http,
    }
}

/// Whether `text` holds a piece of `secret` that survived the literal scrub: changed in
/// case, reversed, cut into pieces, or encoded as hex or base64 (what an echoing upstream
/// may do). Any 8 characters in a row of the secret, or 12 of an encoding, count: a random
/// secret's pieces are not found in ordinary text by chance.
fn quotes_secret(text: &str, secret: &str) -> bool {
    if secret.len() < 8 {
        return false;
    }
    let text = text.to_ascii_lowercase();
    let lower = secret.to_ascii_lowercase();
    let reversed: String = lower.chars().rev().collect();
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let b64 = base64(secret.as_bytes()).to_ascii_lowercase();
    let url_b64 = b64.replace('+', "-").replace('/', "_");
    let found = |variant: &str, window: usize| {
        let bytes = variant.as_bytes();
        bytes.len() >= window
            && bytes
                .windows(window)
                .any(|w| std::str::from_utf8(w).is_ok_and(|w| text.contains(w)))
    };
    found(&lower, 8)
        || found(&reversed, 8)
        || found(&hex, 12)
        || found(b64.trim_end_matches('='), 12)
        || found(url_b64.trim_end_matches('='), 12)
}

/// Standard base64, for [`quotes_secret`].
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A number in [0, 1) that differs between threads and moments; good enough for jitter.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tid = format!("{:?}", std::thread::current().id());
    let mixed = secret::fingerprint(&format!("{nanos}{tid}{}", std::process::id()));
    let n = u32::from_str_radix(&mixed[4..], 16).unwrap_or(0);
    f64::from(n) / f64::from(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_standard_one() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn a_secret_in_disguise_is_found() {
        let secret = "Qx7vSecretK9mWp2LzR4tYh8NbJ3cFdG";
        let reversed: String = secret.chars().rev().collect();
        let hex: String = secret.bytes().map(|b| format!("{b:02X}")).collect();
        for text in [
            secret.to_uppercase(),
            format!("echo {reversed} done"),
            format!("{} / {}", &secret[..16], &secret[16..]),
            hex,
            base64(secret.as_bytes()),
            base64(secret.as_bytes())
                .replace('+', "-")
                .replace('/', "_"),
        ] {
            assert!(quotes_secret(&text, secret), "{text}");
        }
        assert!(!quotes_secret(
            "invalid credential, access_token is invalid or not latest rid: 65a1b2c3-0d1e2f3a",
            secret
        ));
    }

    #[test]
    fn parses_success_and_errors() {
        let ok = parse_reply(
            r#"{"access_token":"ACCESS_TOKEN","expires_in":7200}"#.into(),
            "access_token",
        );
        assert_eq!(
            ok,
            Ok(Fetched {
                token: "ACCESS_TOKEN".into(),
                expires_in: 7200,
                renewed: None,
            })
        );
        let wecom = r#"{"errcode":0,"errmsg":"ok","access_token":"T","expires_in":7200}"#;
        assert!(parse_reply(wecom.into(), "access_token").is_ok());
        let err = parse_reply(
            r#"{"errcode":40013,"errmsg":"invalid appid"}"#.into(),
            "access_token",
        );
        assert_eq!(
            err,
            Err(Failure::WeChat {
                errcode: 40013,
                errmsg: "invalid appid".into()
            })
        );
    }

    #[test]
    fn classifies_bad_bodies() {
        let cases = [
            ("", true),
            ("<html>502 Bad Gateway</html>", true),
            (r#"{"expires_in":7200}"#, false),
            (r#"{"access_token":"T"}"#, false),
            (r#"{"access_token":"","expires_in":7200}"#, false),
            (r#"{"access_token":"a b\n","expires_in":7200}"#, false),
            (r#"{"access_token":12,"expires_in":7200}"#, false),
            (r#"{"access_token":"T","expires_in":-5}"#, false),
            (r#"{"access_token":"T","expires_in":"7200"}"#, false),
        ];
        for (body, transient) in cases {
            let failure = parse_reply(body.into(), "access_token").unwrap_err();
            assert_eq!(failure.is_transient(), transient, "{body}: {failure:?}");
        }
    }

    #[test]
    fn busy_is_transient_and_config_errors_are_not() {
        let busy = Failure::WeChat {
            errcode: -1,
            errmsg: "system error".into(),
        };
        assert!(busy.is_transient());
        let ip = Failure::WeChat {
            errcode: 40164,
            errmsg: "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist".into(),
        };
        assert!(!ip.is_transient());
        assert!(
            ip.to_string()
                .contains("203.0.113.7 is not in the account's IP whitelist")
        );
        assert!(Failure::Http { status: 503 }.is_transient());
        assert!(!Failure::Http { status: 404 }.is_transient());
    }
}
