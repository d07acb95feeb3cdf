//! `wxtoken platform ingest` (one push given on stdin and in arguments) and `wxtoken
//! receive` (one HTTP/1.1 request on stdin/stdout, for inetd or systemd `Accept=yes`).
//! Both verify the signature, decrypt, check that the message is for the platform named,
//! act on it, and run the platform's hook. `receive` answers first and does the slow work
//! (exchanging an auth code) after the reply is sent.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::platform::{require, sealing};
use super::{Context, emit};
use crate::cli::{IngestArgs, ReceiveArgs};
use crate::config::{ApiConfig, api_config};
use crate::domain::{Account, AccountKey, Api, Secret};
use crate::engine::onboard;
use crate::exit::{Exit, fail};
use crate::push::crypto::MsgCrypto;
use crate::push::event::{Event, SECRET_FIELDS, parse_event};
use crate::push::http::{self, Method, Route};
use crate::push::open_push;
use crate::push::xml::{self, Fields};
use crate::store::{Store, TicketStored};

/// A push that passed every check: its fields and its event.
struct Accepted {
    fields: Fields,
    event: Event,
    /// What was done at once (a ticket stored or kept), for the log line.
    done: String,
}

/// Why a push was refused: one line, never quoting what was sent.
struct Refusal(String);

pub fn ingest(ctx: &Context, a: &IngestArgs) -> Result<Exit> {
    let (key, api) = super::platform::named(&a.platform)?;
    let cfg = api_config(&a.api)?;
    let store = ctx.store()?;
    let platform = require(store.as_ref(), &key, api)?;
    let crypto = open_crypto(ctx, store.as_ref(), &platform)?;
    if let Some(echostr) = &a.echostr {
        let plain = verify_url(
            &platform,
            &crypto,
            &a.msg_signature,
            &a.timestamp,
            &a.nonce,
            echostr,
        )
        .map_err(|r| refused(&platform, &r))?;
        emit(&plain)?;
        return Ok(Exit::Ok);
    }
    let mut body = Vec::new();
    std::io::stdin()
        .lock()
        .take(xml::MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| {
            fail(
                Exit::Usage,
                format!("could not read the push from stdin: {e}"),
            )
        })?;
    let accepted = accept(
        ctx,
        store.as_ref(),
        &platform,
        &crypto,
        (&a.msg_signature, &a.timestamp, &a.nonce),
        &body,
    )?
    .map_err(|r| refused(&platform, &r))?;
    // The reply first, and stdout closed, as `receive` does: a caller that relays it to
    // WeChat can answer within WeCom's 1 s while the exchange and the hook go on. The exit
    // code still tells how they went.
    emit("success")?;
    close_stdout();
    Ok(finish(ctx, store.as_ref(), &cfg, &platform, accepted))
}

/// `wxtoken receive`: one request, one reply, then the slow work, then exit. Every request
/// that is not answered 200 gets one log line and exits 10 (a push or request refused),
/// or the exit code of what failed on our side (500: the store, the key file, no push
/// settings).
pub fn receive(ctx: &Context, a: &ReceiveArgs) -> Result<Exit> {
    let cfg = api_config(&a.api)?;
    // The raw descriptor, not `stdin().lock()`: its buffer would take more than a read
    // asks for, and the poll below would then wait on a socket that has nothing more to
    // give while the rest of the request sits in that buffer.
    let mut reader = DeadlineReader {
        inner: raw_stdin(),
        deadline: Instant::now() + Duration::from_secs(a.read_timeout),
    };
    let limits = http::Limits {
        deadline: Some(reader.deadline),
        ..http::Limits::default()
    };
    let request = match http::read_request(&mut reader, limits) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wxtoken: receive: refused a request: {e}");
            reply(e.status(), b"");
            return Ok(Exit::Refused);
        }
    };
    let (id, api) = match &request.route {
        Route::Component(id) => (id.as_str(), Api::Component),
        Route::Suite(id) => (id.as_str(), Api::Suite),
    };
    let refuse = |status: u16, why: &str| {
        eprintln!(
            "wxtoken: receive: {} {id}: refused a request: {why}",
            api.noun()
        );
        reply(status, b"");
        Ok(Exit::Refused)
    };
    let Ok(key) = AccountKey::appid(id) else {
        return refuse(404, "not a valid id");
    };
    let store = match ctx.store() {
        Ok(s) => s,
        Err(err) => return Ok(server_error(api, id, &err)),
    };
    let platform = match require(store.as_ref(), &key, api) {
        Ok(p) => p,
        Err(err) if crate::exit::of(&err) == Exit::Account => {
            return refuse(404, &format!("{err:#}"));
        }
        Err(err) => return Ok(server_error(api, id, &err)),
    };
    let crypto = match open_crypto(ctx, store.as_ref(), &platform) {
        Ok(c) => c,
        Err(err) => return Ok(server_error(api, id, &err)),
    };
    let q = &request.query;
    let (Some(sig), Some(ts), Some(nonce)) = (&q.msg_signature, &q.timestamp, &q.nonce) else {
        return refuse(400, "no msg_signature, timestamp and nonce in the query");
    };
    match request.method {
        Method::Get => {
            let Some(echostr) = &q.echostr else {
                return refuse(
                    400,
                    "a GET without echostr (only WeCom's URL check is a GET)",
                );
            };
            match verify_url(&platform, &crypto, sig, ts, nonce, echostr) {
                Ok(plain) => {
                    reply(200, plain.as_bytes());
                    log::info!("{} {id}: answered the URL check", api.noun());
                    Ok(Exit::Ok)
                }
                Err(r) => refuse(403, &refused_line(&r)),
            }
        }
        Method::Post => {
            let accepted = accept(
                ctx,
                store.as_ref(),
                &platform,
                &crypto,
                (sig, ts, nonce),
                &request.body,
            );
            match accepted {
                Ok(Ok(accepted)) => {
                    // WeChat gets its answer now; the exchange and the hook come after.
                    reply(200, b"success");
                    Ok(finish(ctx, store.as_ref(), &cfg, &platform, accepted))
                }
                Ok(Err(r)) => refuse(403, &refused_line(&r)),
                Err(err) => Ok(server_error(api, id, &err)),
            }
        }
    }
}

/// A failure on our side (the store, the key file, no push settings): 500, one line, and
/// the error's own exit code. WeChat retries a push it got no `success` for.
fn server_error(api: Api, id: &str, err: &anyhow::Error) -> Exit {
    eprintln!("wxtoken: receive: {} {id}: {err:#}", api.noun());
    reply(500, b"");
    crate::exit::of(err)
}

/// The one response of the connection; then the connection's write side is closed, so
/// that the peer sees the reply end while the slow work (an exchange, the hook) goes on.
fn reply(status: u16, body: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = http::write_response(&mut out, status, body);
    let _ = out.flush();
    drop(out);
    close_stdout();
}

/// Ends this process's hold on stdout: `shutdown` sends the FIN on a socket (whoever else
/// holds it), then /dev/null takes descriptor 1's place, which also ends a pipe, and keeps
/// anything printed later off the connection.
fn close_stdout() {
    // SAFETY: plain system calls on descriptor 1 and a descriptor opened here; nothing in
    // this process keeps a raw copy of descriptor 1 (Rust's stdout has been flushed, and
    // writes to the new descriptor go to /dev/null).
    unsafe {
        libc::shutdown(1, libc::SHUT_WR);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

/// Descriptor 0 as an unbuffered reader, never closed by it.
fn raw_stdin() -> std::mem::ManuallyDrop<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: descriptor 0 is open for the whole process (inetd, systemd and socat give the
    // connection there); ManuallyDrop never closes it.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) })
}

/// A reader that gives up at a deadline: each read gets the time that is left.
struct DeadlineReader<R> {
    inner: R,
    deadline: Instant,
}

impl<R: std::ops::DerefMut<Target = std::fs::File>> Read for DeadlineReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        // Rounded up: a poll of 0 ms with time left would spin.
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut fds = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fds, 1, ms) };
        match ready {
            0 => Err(std::io::ErrorKind::TimedOut.into()),
            n if n < 0 => Err(std::io::Error::last_os_error()),
            _ => self.inner.read(buf),
        }
    }
}

/// The platform's push settings, opened with the key file.
fn open_crypto(ctx: &Context, store: &dyn Store, platform: &Account) -> Result<MsgCrypto> {
    let crypto = sealing(ctx, store, None, || Ok(store.platform_crypto(platform.id)?))?;
    let Some(c) = crypto else {
        return Err(fail(
            Exit::Usage,
            format!(
                "{} {} has no push settings: run `wxtoken platform set-crypto` first",
                platform.api.noun(),
                platform.key
            ),
        ));
    };
    if c.token.locked_kid().is_some() || c.aes_key.locked_kid().is_some() {
        return Err(fail(
            Exit::Key,
            format!(
                "the push settings of {} do not open with the key file",
                platform.key
            ),
        ));
    }
    MsgCrypto::from_parts(c.token.expose(), c.aes_key.expose()).map_err(|e| {
        fail(
            Exit::Key,
            format!("the stored push settings of {}: {e}", platform.key),
        )
    })
}

/// The ids a push for this platform may carry as its receiveid: the component appid; the
/// suite id, or the provider corpid (URL checks, and some pushes).
fn receivers(platform: &Account) -> Vec<&str> {
    let mut ids = vec![platform.key.appid.as_str()];
    if let Some(p) = &platform.receiver {
        ids.push(p);
    }
    ids
}

/// WeCom's URL check: the decrypted echostr.
fn verify_url(
    platform: &Account,
    crypto: &MsgCrypto,
    sig: &str,
    ts: &str,
    nonce: &str,
    echostr: &str,
) -> Result<String, Refusal> {
    if platform.api != Api::Suite {
        return Err(Refusal(
            "a URL check (echostr) is WeCom's; this is a component".into(),
        ));
    }
    let (plain, receiveid) = crypto
        .open(sig, ts, nonce, echostr)
        .map_err(|e| Refusal(format!("the URL check: {e}")))?;
    crate::push::crypto::check_receiver(&receiveid, &receivers(platform))
        .map_err(|e| Refusal(format!("the URL check: {e}")))?;
    let plain = String::from_utf8(plain).map_err(|_| Refusal("the echostr is not text".into()))?;
    if plain.chars().any(char::is_control) {
        return Err(Refusal("the echostr has control characters".into()));
    }
    Ok(plain)
}

/// The refusal as the end of a log line.
fn refused_line(r: &Refusal) -> String {
    format!("{}; nothing was stored", r.0)
}

fn refused(platform: &Account, r: &Refusal) -> anyhow::Error {
    fail(
        Exit::Refused,
        format!(
            "refused a push for {} {}: {}; nothing was stored",
            platform.api.noun(),
            platform.key,
            r.0
        ),
    )
}

/// Verifies, decrypts and checks a push; stores a ticket at once (the fast part). `Err`
/// for the store or the key file, `Ok(Err)` for a push refused.
fn accept(
    ctx: &Context,
    store: &dyn Store,
    platform: &Account,
    crypto: &MsgCrypto,
    (sig, ts, nonce): (&str, &str, &str),
    body: &[u8],
) -> Result<Result<Accepted, Refusal>> {
    if body.len() > xml::MAX_BODY {
        return Ok(Err(Refusal(format!(
            "the body is over {} KiB",
            xml::MAX_BODY / 1024
        ))));
    }
    let (fields, receiveid) = match open_push(crypto, sig, ts, nonce, body) {
        Ok(opened) => opened,
        Err(e) => return Ok(Err(Refusal(e.to_string()))),
    };
    if let Err(e) = crate::push::crypto::check_receiver(&receiveid, &receivers(platform)) {
        return Ok(Err(Refusal(e.to_string())));
    }
    let event = match parse_event(&fields) {
        Ok(e) => e,
        Err(e) => return Ok(Err(Refusal(format!("the message: {e}")))),
    };
    if let Some(id) = event.receiver()
        && id != platform.key.appid
    {
        return Ok(Err(Refusal(format!(
            "the message is for {} {}, not this one",
            platform.api.noun(),
            crate::policy::one_line(id, 64)
        ))));
    }
    let now = ctx.now();
    let ticket = match &event {
        Event::ComponentTicket {
            create_time,
            ticket,
            ..
        } if platform.api == Api::Component => Some((*create_time, ticket)),
        Event::SuiteTicket {
            timestamp, ticket, ..
        } if platform.api == Api::Suite => Some((*timestamp, ticket)),
        Event::ComponentTicket { .. } | Event::SuiteTicket { .. } => {
            return Ok(Err(Refusal(
                "a ticket of the other kind of platform".into(),
            )));
        }
        _ => None,
    };
    let done = match ticket {
        Some((created, ticket)) => {
            if ticket.expose().len() > 512 || !ticket.expose().bytes().all(|b| b.is_ascii_graphic())
            {
                return Ok(Err(Refusal("the ticket is not a valid ticket".into())));
            }
            let secret = Secret::new(ticket.expose().to_string());
            let stored = sealing(ctx, store, None, || {
                Ok(store.set_platform_ticket(platform.id, &secret, created, now)?)
            })?;
            match stored {
                TicketStored::Stored => "stored the ticket".to_string(),
                TicketStored::Kept => {
                    "kept the stored ticket, which is as new or newer".to_string()
                }
            }
        }
        None => String::new(),
    };
    Ok(Ok(Accepted {
        fields,
        event,
        done,
    }))
}

/// Acts on an accepted push: exchanges codes, revokes, records, then runs the hook. A
/// failure is recorded (status shows it) and logged; the exit code says it.
fn finish(
    ctx: &Context,
    store: &dyn Store,
    cfg: &ApiConfig,
    platform: &Account,
    accepted: Accepted,
) -> Exit {
    let now = ctx.now();
    let (name, tenant, result) = act(ctx, store, cfg, platform, &accepted.event, now);
    let exit = match &result {
        Ok(what) => {
            let what = if what.is_empty() {
                &accepted.done
            } else {
                what
            };
            if !what.is_empty() {
                log::info!("{} {}: {name}: {what}", platform.api.noun(), platform.key);
            }
            Exit::Ok
        }
        Err(err) => {
            eprintln!(
                "wxtoken: {} {}: {name}: {err:#}",
                platform.api.noun(),
                platform.key
            );
            crate::exit::of(err).merge(Exit::FetchFailed)
        }
    };
    if !matches!(
        accepted.event,
        Event::ComponentTicket { .. } | Event::SuiteTicket { .. } | Event::Other { .. }
    ) {
        let failure = result.as_ref().err().map(|e| format!("{e:#}"));
        if let Err(e) = store.record_platform_event(
            platform.id,
            now,
            name,
            tenant.as_deref(),
            failure.as_deref(),
        ) {
            eprintln!("wxtoken: could not record the {name} event: {e}");
        }
    }
    run_hook(store, platform, &accepted, name, tenant.as_deref());
    exit
}

/// What an event does; its name, the tenant it concerns, and what came of it.
fn act(
    ctx: &Context,
    store: &dyn Store,
    cfg: &ApiConfig,
    platform: &Account,
    event: &Event,
    now: i64,
) -> (&'static str, Option<String>, Result<String>) {
    let client = || ctx.client(cfg);
    match event {
        Event::ComponentTicket { .. } => ("component_verify_ticket", None, Ok(String::new())),
        Event::SuiteTicket { .. } => ("suite_ticket", None, Ok(String::new())),
        Event::Other { .. } => ("other", None, Ok(String::new())),
        Event::Authorized {
            authorizer_appid,
            code,
            update,
            ..
        } => {
            let name = if *update {
                "updateauthorized"
            } else {
                "authorized"
            };
            let result = (|| {
                let token = onboard::platform_token(store, platform, now)?;
                let code = Secret::new(code.expose().to_string());
                let outcome = client().query_auth(&platform.key.appid, &token, &code);
                let account = sealing(ctx, store, None, || {
                    onboard::store_authorized(store, platform, outcome, now, cfg.claim_ttl)
                })?;
                if account.key.appid != *authorizer_appid {
                    log::warn!(
                        "the code was for {}, the push named {authorizer_appid}",
                        account.key.appid
                    );
                }
                Ok(format!(
                    "stored the refresh token and first token of {}",
                    account.key.appid
                ))
            })();
            (name, Some(authorizer_appid.clone()), result)
        }
        Event::Unauthorized {
            authorizer_appid, ..
        } => {
            let key = AccountKey {
                appid: authorizer_appid.clone(),
                agent: platform.key.appid.clone(),
            };
            let result = revoke(store, &key, now);
            ("unauthorized", Some(authorizer_appid.clone()), result)
        }
        Event::CreateAuth { auth_code, .. } | Event::ResetPermanentCode { auth_code, .. } => {
            let name = if matches!(event, Event::CreateAuth { .. }) {
                "create_auth"
            } else {
                "reset_permanent_code"
            };
            let mut tenant = None;
            let result = (|| {
                let token = onboard::platform_token(store, platform, now)?;
                let code = Secret::new(auth_code.expose().to_string());
                let (code, agent) = onboard::exchange_install(&client(), platform, &token, &code)?;
                tenant = Some(code.corpid.clone());
                let installed = sealing(ctx, store, None, || {
                    onboard::store_installed(store, platform, code, agent, now)
                })?;
                Ok(format!(
                    "stored the permanent code of {}",
                    installed.account.key
                ))
            })();
            (name, tenant, result)
        }
        // The corp's authorization changed (visibility, permissions, a 代开发 app
        // disabled or enabled again): its auth info is read again with its permanent
        // code. A cancelled one (48004) is revoked; the agents it lists are logged.
        Event::ChangeAuth { auth_corpid, .. } => {
            let result = (|| {
                let tenants: Vec<Account> = store
                    .accounts()?
                    .into_iter()
                    .filter(|a| a.platform == Some(platform.id) && a.key.appid == *auth_corpid)
                    .collect();
                let Some(tenant) = tenants.first() else {
                    return Ok(format!("corp {auth_corpid} is not in the store"));
                };
                if tenant.secret.locked_kid().is_some() || tenant.secret.expose().is_empty() {
                    return Ok(format!("the permanent code of {} is not open", tenant.key));
                }
                let token = onboard::platform_token(store, platform, now)?;
                match client()
                    .auth_info(&token, auth_corpid, &tenant.secret)
                    .result
                {
                    Ok(info) => Ok(format!(
                        "corp {auth_corpid} is authorized with {} agent(s)",
                        info.agents.len()
                    )),
                    Err(crate::domain::Failure::WeChat { errcode: 48004, .. }) => {
                        let mut done = Vec::new();
                        for t in &tenants {
                            done.push(revoke(store, &t.key, now)?);
                        }
                        Ok(done.join(", "))
                    }
                    Err(f) => Err(onboard::exchange_failed("get_auth_info", platform, &f)),
                }
            })();
            ("change_auth", Some(auth_corpid.clone()), result)
        }
        Event::CancelAuth { auth_corpid, .. } => {
            let result = (|| {
                let mut revoked = Vec::new();
                for a in store.accounts()? {
                    if a.platform == Some(platform.id) && a.key.appid == *auth_corpid {
                        revoke(store, &a.key, now)?;
                        revoked.push(a.key.to_string());
                    }
                }
                Ok(format!("revoked {}", revoked.join(", ")))
            })();
            ("cancel_auth", Some(auth_corpid.clone()), result)
        }
    }
}

fn revoke(store: &dyn Store, key: &AccountKey, now: i64) -> Result<String> {
    if store.account(key)?.is_none() {
        return Ok(format!("{key} is not in the store"));
    }
    store.hold_account(
        key,
        "revoked: the authorization was cancelled (a push said so); no further requests are \
         made for it (onboard it again with `wxtoken authorizer add --auth-code`)",
        now,
    )?;
    Ok(format!("revoked {key}"))
}

/// The platform's hook, if one is set: the event XML on stdin (secrets removed unless the
/// user opted in). A failing hook is logged; it never costs the ticket or the reply.
fn run_hook(
    store: &dyn Store,
    platform: &Account,
    accepted: &Accepted,
    name: &str,
    tenant: Option<&str>,
) {
    let Ok(Some(crypto)) = store.platform_crypto(platform.id) else {
        return;
    };
    let Some(hook) = &crypto.hook else { return };
    let secret_fields: &[&str] = if crypto.hook_secrets {
        &[]
    } else {
        SECRET_FIELDS
    };
    let xml = xml::redact(&accepted.fields, secret_fields);
    let info_type = accepted.fields.get("InfoType").unwrap_or(name).to_string();
    let env = [
        ("WXTOKEN_EVENT", info_type),
        ("WXTOKEN_PLATFORM", platform.key.appid.clone()),
        ("WXTOKEN_PLATFORM_KIND", platform.api.noun().to_string()),
        ("WXTOKEN_AUTHORIZER", tenant.unwrap_or("").to_string()),
    ];
    let hidden: Vec<String> = SECRET_FIELDS
        .iter()
        .filter_map(|f| accepted.fields.get(f))
        .map(str::to_string)
        .collect();
    let hidden: Vec<&str> = hidden.iter().map(String::as_str).collect();
    let timeout = Duration::from_secs(crypto.hook_timeout.clamp(1, 600) as u64);
    let whose = format!("{} {} hook", platform.api.noun(), platform.key);
    if let Err(e) =
        crate::publish::run_command(hook, &env, xml.into_bytes(), timeout, &hidden, &whose)
    {
        eprintln!("wxtoken: {whose}: {e}");
    }
}
