//! A loopback stand-in for WeChat's and WeCom's token API, built on the standard library only.
//!
//! It answers the paths wxtoken calls the way the real platform does by default, and each test
//! can script it: queue replies per path (or per account), add latency, hold requests at a gate,
//! and move a virtual clock. It binds 127.0.0.1 only and never reaches the internet.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const TOKEN: &str = "/cgi-bin/token";
pub const STABLE_TOKEN: &str = "/cgi-bin/stable_token";
pub const WORK_TOKEN: &str = "/cgi-bin/gettoken";
pub const TICKET: &str = "/cgi-bin/ticket/getticket";
pub const WORK_CORP_TICKET: &str = "/cgi-bin/get_jsapi_ticket";
pub const WORK_AGENT_TICKET: &str = "/cgi-bin/ticket/get";

/// Lifetime the platform gives every new token and ticket, in seconds.
const LIFETIME: u64 = 7200;
/// The stable token is renewed only in the last five minutes of its life.
const STABLE_WINDOW: u64 = 300;
const MAX_BODY: usize = 1 << 20;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A success carrying this token (a ticket on ticket paths); the stand-in accepts it later.
    Token { token: String, expires_in: u64 },
    /// HTTP 200 with `{"errcode":N,"errmsg":"..."}`.
    Errcode(i64, String),
    /// This HTTP status with this body, e.g. a proxy's 502 page.
    Status(u16, String),
    /// HTTP 200 with this raw body.
    Body(String),
    /// HTTP 200 with an empty body.
    Empty,
    /// Close the connection without answering.
    Drop,
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
    /// HTTP 200 announcing and streaming a body of this many bytes.
    Oversized(u64),
    /// Never answer; the connection closes when the stand-in shuts down.
    Hang,
}

impl Reply {
    pub fn token(token: &str, expires_in: u64) -> Reply {
        Reply::Token {
            token: token.to_string(),
            expires_in,
        }
    }
    pub fn errcode(code: i64, msg: &str) -> Reply {
        Reply::Errcode(code, msg.to_string())
    }
    pub fn delay(by: Duration, then: Reply) -> Reply {
        Reply::Delay(by, Box::new(then))
    }
}

/// A request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    /// Names are lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Classic,
    Stable,
    Work,
}

/// A token the stand-in accepts until `expires_at` on the virtual clock.
struct Live {
    kind: Kind,
    key: String,
    secret: String,
    seq: u64,
    expires_at: u64,
}

#[derive(Default)]
struct State {
    stopped: bool,
    seed: u64,
    seq: u64,
    now: u64,
    latency: Duration,
    creds: HashMap<String, HashSet<String>>,
    scripts: HashMap<(String, Option<String>), VecDeque<Reply>>,
    gates: HashSet<String>,
    hits: HashMap<String, usize>,
    hits_for: HashMap<(String, String), usize>,
    log: Vec<Request>,
    live: HashMap<String, Live>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every hit, gate change, clock change and shutdown.
    cond: Condvar,
    conns: Mutex<HashMap<u64, TcpStream>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d` unless the stand-in shuts down first; returns false if it did.
    fn pause(&self, d: Duration) -> bool {
        let deadline = Instant::now().checked_add(d);
        let mut st = self.lock();
        loop {
            if st.stopped {
                return false;
            }
            let now = Instant::now();
            let left = match deadline {
                Some(at) if at <= now => return true,
                Some(at) => at - now,
                None => Duration::from_secs(3600),
            };
            st = self
                .cond
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The running stand-in. Dropping it stops the server.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl StandIn {
    /// Starts on an ephemeral loopback port.
    pub fn start() -> StandIn {
        StandIn::bind(0).expect("stand-in: could not bind 127.0.0.1:0")
    }

    /// Starts on 127.0.0.1:`port` (0 picks a free port).
    pub fn bind(port: u16) -> io::Result<StandIn> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let state = State {
            seed: nanos as u64 ^ u64::from(addr.port()),
            ..State::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            cond: Condvar::new(),
            conns: Mutex::default(),
        });
        let sh = shared.clone();
        let acceptor = thread::spawn(move || accept_loop(listener, sh));
        Ok(StandIn {
            addr,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes open connections and wakes delayed, gated and hanging requests.
    pub fn shutdown(&self) {
        let Some(acceptor) = self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        self.shared.lock().stopped = true;
        self.shared.cond.notify_all();
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = acceptor.join();
        for conn in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Makes `appid` (or a corpid) known with `secret`. Once any account is registered, unknown
    /// ids get 40013 and wrong secrets 40125 (40091 on WeCom). Several secrets per id are allowed.
    pub fn register(&self, id: &str, secret: &str) {
        self.shared
            .lock()
            .creds
            .entry(id.to_string())
            .or_default()
            .insert(secret.to_string());
    }

    /// Queues a reply for `route` (a path such as [`TOKEN`]), used before the default behaviour.
    pub fn push(&self, route: &str, reply: Reply) {
        self.queue(route, None, reply);
    }

    /// Queues a reply for `route` that only requests for this appid/corpid consume. On ticket
    /// paths the key is the account the access_token was issued to.
    pub fn push_for(&self, route: &str, key: &str, reply: Reply) {
        self.queue(route, Some(key.to_string()), reply);
    }

    fn queue(&self, route: &str, key: Option<String>, reply: Reply) {
        self.shared
            .lock()
            .scripts
            .entry((route.to_string(), key))
            .or_default()
            .push_back(reply);
    }

    /// Adds this delay before every reply.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Moves the virtual clock that token lifetimes are measured against.
    pub fn advance(&self, by: Duration) {
        self.shared.lock().now += by.as_secs();
        self.shared.cond.notify_all();
    }

    /// Invalidates a token early, as WeCom may do.
    pub fn revoke(&self, token: &str) {
        self.shared.lock().live.remove(token);
    }

    /// Whether the stand-in would accept this access token now.
    pub fn is_valid(&self, token: &str) -> bool {
        let st = self.shared.lock();
        st.live.get(token).is_some_and(|l| l.expires_at > st.now)
    }

    pub fn hits(&self, route: &str) -> usize {
        self.shared.lock().hits.get(route).copied().unwrap_or(0)
    }

    pub fn hits_for(&self, route: &str, key: &str) -> usize {
        let st = self.shared.lock();
        st.hits_for
            .get(&(route.to_string(), key.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().log.clone()
    }

    /// Holds requests to `route` (already counted) until [`StandIn::open_gate`].
    pub fn gate(&self, route: &str) {
        self.shared.lock().gates.insert(route.to_string());
    }

    pub fn open_gate(&self, route: &str) {
        self.shared.lock().gates.remove(route);
        self.shared.cond.notify_all();
    }

    /// Waits until `route` has had at least `n` hits; false on timeout.
    pub fn wait_for_hits(&self, route: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.hits.get(route).copied().unwrap_or(0) >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    let mut next_id = 0u64;
    for conn in listener.incoming() {
        if sh.lock().stopped {
            break;
        }
        let Ok(stream) = conn else {
            // Out of file descriptors or similar: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        next_id += 1;
        let id = next_id;
        let sh = sh.clone();
        thread::spawn(move || {
            if let Ok(clone) = stream.try_clone() {
                sh.conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, clone);
            }
            let _ = serve(&sh, stream);
            sh.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }
}

fn serve(sh: &Shared, stream: TcpStream) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        if sh.lock().stopped {
            return Ok(());
        }
        let (req, close) = match read_request(&mut reader) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(()),
            Err(e) => {
                write_response(&mut out, 400, "text/plain", e.to_string().as_bytes(), true)?;
                return Ok(());
            }
        };
        if !handle(sh, req, &mut out, close)? || close {
            return Ok(());
        }
    }
}

/// Reads one request; `None` on a clean end of stream. The flag says the client wants to close.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Option<(Request, bool)>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    loop {
        line.clear();
        if r.by_ref().take(8192).read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let (method, version) = (method.to_string(), version.to_string());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), parse_query(query));
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.by_ref().take(8192).read_line(&mut line)? == 0 {
            return Err(bad("end of stream inside headers"));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("malformed header"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut req = Request {
        method,
        path,
        query,
        headers,
        body: String::new(),
    };
    let conn = req.header("connection").unwrap_or("").to_ascii_lowercase();
    let close = conn.contains("close") || (version == "HTTP/1.0" && !conn.contains("keep-alive"));
    let mut body = Vec::new();
    if req
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            line.clear();
            r.by_ref().take(1024).read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if body.len() + size > MAX_BODY {
                return Err(bad("body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.by_ref().take(1024).read_line(&mut line)?;
            if size == 0 {
                // The terminating chunk may be followed by trailers; skip to the blank line.
                while !line.trim().is_empty() {
                    line.clear();
                    if r.by_ref().take(8192).read_line(&mut line)? == 0 {
                        break;
                    }
                }
                break;
            }
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    req.body = String::from_utf8_lossy(&body).into_owned();
    Ok(Some((req, close)))
}

/// Splits and decodes an `application/x-www-form-urlencoded` string; the first value wins.
pub fn parse_query(q: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.entry(percent_decode(k))
            .or_insert_with(|| percent_decode(v));
    }
    map
}

/// Decodes `%XX` and `+`; malformed escapes are kept literally.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                out.push((hex(b[i + 1]).unwrap() * 16 + hex(b[i + 2]).unwrap()) as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a flat JSON object; strings are unescaped, other scalars kept as their text.
/// Nested objects and arrays are rejected, which is all the stable-token body needs.
pub fn parse_flat_json(s: &str) -> Option<HashMap<String, String>> {
    let mut p = s.trim().chars().peekable();
    let mut map = HashMap::new();
    let skip_ws = |p: &mut std::iter::Peekable<std::str::Chars>| {
        while p.next_if(|c| c.is_whitespace()).is_some() {}
    };
    if p.next()? != '{' {
        return None;
    }
    skip_ws(&mut p);
    if p.next_if_eq(&'}').is_none() {
        loop {
            skip_ws(&mut p);
            let k = json_string(&mut p)?;
            skip_ws(&mut p);
            p.next_if_eq(&':')?;
            skip_ws(&mut p);
            let v = if p.peek() == Some(&'"') {
                json_string(&mut p)?
            } else {
                let mut v = String::new();
                while let Some(c) = p.next_if(|c| c.is_ascii_alphanumeric() || "+-.".contains(*c)) {
                    v.push(c);
                }
                let number = v.parse::<f64>().is_ok();
                if !(number || v == "true" || v == "false" || v == "null") {
                    return None;
                }
                v
            };
            map.insert(k, v);
            skip_ws(&mut p);
            match p.next()? {
                ',' => continue,
                '}' => break,
                _ => return None,
            }
        }
    }
    p.all(char::is_whitespace).then_some(map)
}

fn json_string(p: &mut std::iter::Peekable<std::str::Chars>) -> Option<String> {
    p.next_if_eq(&'"')?;
    let mut s = String::new();
    loop {
        match p.next()? {
            '"' => return Some(s),
            '\\' => match p.next()? {
                'n' => s.push('\n'),
                't' => s.push('\t'),
                'r' => s.push('\r'),
                'b' => s.push('\u{8}'),
                'f' => s.push('\u{c}'),
                'u' => {
                    let hex: String = (0..4).filter_map(|_| p.next()).collect();
                    let code = u32::from_str_radix(&hex, 16).ok()?;
                    s.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                c @ ('"' | '\\' | '/') => s.push(c),
                _ => return None,
            },
            c if (c as u32) < 0x20 => return None,
            c => s.push(c),
        }
    }
}

pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn handle(sh: &Shared, req: Request, out: &mut TcpStream, close: bool) -> io::Result<bool> {
    let route = req.path.clone();
    let key = {
        let mut st = sh.lock();
        let key = st.key_for(&req);
        *st.hits.entry(route.clone()).or_default() += 1;
        if let Some(k) = &key {
            *st.hits_for.entry((route.clone(), k.clone())).or_default() += 1;
        }
        st.log.push(req.clone());
        key
    };
    sh.cond.notify_all();
    let (reply, latency) = {
        let mut st = sh.lock();
        while st.gates.contains(&route) && !st.stopped {
            st = sh.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let reply = match st.scripted(&route, key.as_deref()) {
            Some(reply) => {
                if let (Reply::Token { token, expires_in }, Some(kind)) = (&reply, kind_of(&route))
                {
                    st.adopt(kind, key.as_deref().unwrap_or(""), token, *expires_in);
                }
                reply
            }
            None => st.default_reply(&req),
        };
        (reply, st.latency)
    };
    if !sh.pause(latency) {
        return Ok(false);
    }
    send(sh, out, &route, reply, close)
}

fn kind_of(route: &str) -> Option<Kind> {
    match route {
        TOKEN => Some(Kind::Classic),
        STABLE_TOKEN => Some(Kind::Stable),
        WORK_TOKEN => Some(Kind::Work),
        _ => None,
    }
}

fn send(
    sh: &Shared,
    out: &mut TcpStream,
    route: &str,
    reply: Reply,
    close: bool,
) -> io::Result<bool> {
    const JSON: &str = "application/json; encoding=utf-8";
    let body = match reply {
        Reply::Drop => {
            let _ = out.shutdown(Shutdown::Both);
            return Ok(false);
        }
        Reply::Hang => {
            sh.pause(Duration::MAX);
            return Ok(false);
        }
        Reply::Delay(by, then) => {
            if !sh.pause(by) {
                return Ok(false);
            }
            return send(sh, out, route, *then, close);
        }
        Reply::Oversized(n) => return stream_oversized(out, n, close).map(|()| true),
        Reply::Status(code, body) => {
            write_response(
                out,
                code,
                "text/html; charset=utf-8",
                body.as_bytes(),
                close,
            )?;
            return Ok(true);
        }
        Reply::Token { token, expires_in } => match route {
            TICKET | WORK_CORP_TICKET | WORK_AGENT_TICKET => {
                format!(
                    r#"{{"errcode":0,"errmsg":"ok","ticket":"{token}","expires_in":{expires_in}}}"#
                )
            }
            WORK_TOKEN => {
                format!(
                    r#"{{"errcode":0,"errmsg":"ok","access_token":"{token}","expires_in":{expires_in}}}"#
                )
            }
            _ => format!(r#"{{"access_token":"{token}","expires_in":{expires_in}}}"#),
        },
        Reply::Errcode(code, msg) => {
            format!(r#"{{"errcode":{code},"errmsg":"{}"}}"#, json_escape(&msg))
        }
        Reply::Body(body) => body,
        Reply::Empty => String::new(),
    };
    write_response(out, 200, JSON, body.as_bytes(), close)?;
    Ok(true)
}

fn write_response(
    out: &mut impl Write,
    code: u16,
    ctype: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    write_head(out, code, ctype, body.len() as u64, close)?;
    out.write_all(body)?;
    out.flush()
}

fn write_head(
    out: &mut impl Write,
    code: u16,
    ctype: &str,
    len: u64,
    close: bool,
) -> io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    };
    let conn = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: {conn}\r\n\r\n"
    );
    out.write_all(head.as_bytes())
}

/// Streams `n` bytes that start like a token reply, without holding them in memory.
/// A client that hangs up early ends the stream with an error, which the caller ignores.
fn stream_oversized(out: &mut TcpStream, n: u64, close: bool) -> io::Result<()> {
    write_head(out, 200, "application/json; encoding=utf-8", n, close)?;
    let prefix = br#"{"access_token":""#;
    let mut chunk = vec![b'A'; 64 * 1024];
    let lead = prefix.len().min(n as usize);
    chunk[..lead].copy_from_slice(&prefix[..lead]);
    let mut left = n;
    while left > 0 {
        let take = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..take])?;
        left -= take as u64;
        chunk[..lead].fill(b'A');
    }
    out.flush()
}

impl State {
    /// The account a request concerns: appid, corpid, or the owner of the access_token.
    fn key_for(&self, req: &Request) -> Option<String> {
        let q = |k: &str| req.query.get(k).filter(|v| !v.is_empty()).cloned();
        match req.path.as_str() {
            TOKEN => q("appid"),
            WORK_TOKEN => q("corpid"),
            STABLE_TOKEN => parse_flat_json(&req.body)?
                .remove("appid")
                .filter(|v| !v.is_empty()),
            _ => self
                .live
                .get(req.query.get("access_token")?)
                .map(|l| l.key.clone()),
        }
    }

    fn scripted(&mut self, route: &str, key: Option<&str>) -> Option<Reply> {
        let mut pop =
            |k: Option<String>| self.scripts.get_mut(&(route.to_string(), k))?.pop_front();
        key.and_then(|k| pop(Some(k.to_string())))
            .or_else(|| pop(None))
    }

    /// A unique token-like string: 128 chars of `[A-Za-z0-9_-]` that start with a counter.
    fn mint(&mut self, tag: &str) -> String {
        self.seq += 1;
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut x = self.seed ^ self.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut s = format!("{}_{tag}_", self.seq);
        while s.len() < 128 {
            // splitmix64: cheap, well-mixed filler so tokens look random.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            s.push(ALPHABET[((z ^ (z >> 31)) >> 58) as usize] as char);
        }
        s
    }

    fn rid(&mut self) -> String {
        self.seq += 1;
        format!("{:08x}-{:08x}", self.seed as u32, self.seq as u32)
    }

    fn err(&mut self, code: i64, msg: &str) -> Reply {
        let rid = self.rid();
        Reply::Errcode(code, format!("{msg} rid: {rid}"))
    }

    /// Registers a token the stand-in handed out so tickets accept it.
    fn adopt(&mut self, kind: Kind, key: &str, token: &str, expires_in: u64) {
        self.seq += 1;
        let seq = self.seq;
        let live = Live {
            kind,
            key: key.to_string(),
            secret: String::new(),
            seq,
            expires_at: self.now + expires_in,
        };
        self.live.insert(token.to_string(), live);
    }

    fn issue(&mut self, kind: Kind, key: &str, secret: &str) -> String {
        let token = self.mint(match kind {
            Kind::Classic => "AT",
            Kind::Stable => "ST",
            Kind::Work => "WK",
        });
        let (seq, expires_at) = (self.seq, self.now + LIFETIME);
        let live = Live {
            kind,
            key: key.to_string(),
            secret: secret.to_string(),
            seq,
            expires_at,
        };
        self.live.insert(token.clone(), live);
        token
    }

    /// The newest unexpired token of this kind for this account (and secret, if given).
    fn current(&self, kind: Kind, key: &str, secret: Option<&str>) -> Option<(String, u64)> {
        self.live
            .iter()
            .filter(|(_, l)| l.kind == kind && l.key == key && l.expires_at > self.now)
            .filter(|(_, l)| secret.is_none_or(|s| l.secret == s))
            .max_by_key(|(_, l)| l.seq)
            .map(|(t, l)| (t.clone(), l.expires_at - self.now))
    }

    fn check_creds(&mut self, id: &str, secret: &str, work: bool) -> Result<(), Reply> {
        if self.creds.is_empty() {
            return Ok(());
        }
        match self.creds.get(id) {
            None if work => Err(self.err(40013, "invalid corpid")),
            None => Err(self.err(40013, "invalid appid")),
            Some(s) if s.contains(secret) => Ok(()),
            Some(_) if work => Err(self.err(40091, "secret is invalid")),
            Some(_) => Err(self.err(40125, "invalid appsecret")),
        }
    }

    fn default_reply(&mut self, req: &Request) -> Reply {
        let result = match req.path.as_str() {
            TOKEN => self.classic(req),
            STABLE_TOKEN => self.stable(req),
            WORK_TOKEN => self.work(req),
            TICKET | WORK_CORP_TICKET | WORK_AGENT_TICKET => self.ticket(req),
            _ => Err(Reply::Status(404, format!("no such path: {}\n", req.path))),
        };
        result.unwrap_or_else(|e| e)
    }

    fn classic(&mut self, req: &Request) -> Result<Reply, Reply> {
        let q = |k: &str| req.query.get(k).map_or("", String::as_str);
        if q("grant_type") != "client_credential" {
            return Err(self.err(40002, "invalid grant_type"));
        }
        let (appid, secret) = self.id_and_secret(q("appid"), q("secret"), false)?;
        let token = self.issue(Kind::Classic, &appid, &secret);
        // Each fetch invalidates older tokens; the previous one survives for the overlap.
        let mut mine: Vec<(u64, String)> = (self.live.iter())
            .filter(|(_, l)| l.kind == Kind::Classic && l.key == appid)
            .map(|(t, l)| (l.seq, t.clone()))
            .collect();
        mine.sort();
        for (_, old) in mine.iter().rev().skip(2) {
            self.live.remove(old);
        }
        Ok(Reply::Token {
            token,
            expires_in: LIFETIME,
        })
    }

    fn id_and_secret(
        &mut self,
        id: &str,
        secret: &str,
        work: bool,
    ) -> Result<(String, String), Reply> {
        if id.is_empty() {
            return Err(self.err(
                41002,
                if work {
                    "corpid missing"
                } else {
                    "appid missing"
                },
            ));
        }
        if secret.is_empty() {
            return Err(self.err(
                41004,
                if work {
                    "corpsecret missing"
                } else {
                    "appsecret missing"
                },
            ));
        }
        self.check_creds(id, secret, work)?;
        Ok((id.to_string(), secret.to_string()))
    }

    fn stable(&mut self, req: &Request) -> Result<Reply, Reply> {
        if req.method != "POST" {
            return Err(self.err(43002, "require POST method"));
        }
        let Some(body) = parse_flat_json(&req.body) else {
            return Err(self.err(47001, "data format error"));
        };
        let b = |k: &str| body.get(k).map_or("", String::as_str);
        if b("grant_type") != "client_credential" {
            return Err(self.err(40002, "invalid grant_type"));
        }
        let (appid, secret) = self.id_and_secret(b("appid"), b("secret"), false)?;
        if b("force_refresh") == "true" {
            self.live
                .retain(|_, l| !(l.kind == Kind::Stable && l.key == appid));
        } else if let Some((token, left)) = self.current(Kind::Stable, &appid, None) {
            if left > STABLE_WINDOW {
                return Ok(Reply::Token {
                    token,
                    expires_in: left,
                });
            }
        }
        let token = self.issue(Kind::Stable, &appid, &secret);
        Ok(Reply::Token {
            token,
            expires_in: LIFETIME,
        })
    }

    fn work(&mut self, req: &Request) -> Result<Reply, Reply> {
        let q = |k: &str| req.query.get(k).map_or("", String::as_str);
        let (corpid, secret) = self.id_and_secret(q("corpid"), q("corpsecret"), true)?;
        let (token, expires_in) = match self.current(Kind::Work, &corpid, Some(&secret)) {
            Some(current) => current,
            None => (self.issue(Kind::Work, &corpid, &secret), LIFETIME),
        };
        let body = format!(
            r#"{{"errcode":0,"errmsg":"ok","access_token":"{token}","expires_in":{expires_in}}}"#
        );
        Ok(Reply::Body(body))
    }

    fn ticket(&mut self, req: &Request) -> Result<Reply, Reply> {
        let q = |k: &str| req.query.get(k).map_or("", String::as_str);
        let types: Option<&[&str]> = match req.path.as_str() {
            TICKET => Some(&["jsapi", "wx_card"]),
            WORK_AGENT_TICKET => Some(&["agent_config"]),
            _ => None,
        };
        let token = q("access_token");
        if token.is_empty() {
            return Err(self.err(41001, "access_token missing"));
        }
        if !self
            .live
            .get(token)
            .is_some_and(|l| l.expires_at > self.now)
        {
            return Err(self.err(
                40001,
                "invalid credential, access_token is invalid or not latest",
            ));
        }
        if types.is_some_and(|t| !t.contains(&q("type"))) {
            return Err(self.err(40097, "invalid args"));
        }
        let ticket = self.mint("TK");
        let body =
            format!(r#"{{"errcode":0,"errmsg":"ok","ticket":"{ticket}","expires_in":{LIFETIME}}}"#);
        Ok(Reply::Body(body))
    }
}
