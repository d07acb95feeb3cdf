//! A loopback stand-in for WeChat's and WeCom's token API, built on the standard library only.
//!
//! It answers the paths wxtoken calls the way the real platform does by default, and each test
//! can script it: queue replies per path (or per account), add latency, hold requests at a gate,
//! and move a virtual clock. It binds 127.0.0.1 only and never reaches the internet.
//!
//! Besides direct accounts it plays Open Platform third-party platforms (components and their
//! authorizers) and WeCom suites, 代开发 templates and providers: see the [`platform`] module's
//! docs for their routes, defaults and error codes.
#![allow(dead_code)]

pub mod pg;
pub mod platform;

pub use platform::*;

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
/// Business calls that only check the access_token they are given, for tests where an SDK
/// makes a call with the token wxtoken published: an Official Account's and a WeCom app's.
pub const MENU_GET: &str = "/cgi-bin/menu/get";
pub const WORK_USER_GET: &str = "/cgi-bin/user/get";
pub const QUOTA_GET: &str = "/cgi-bin/openapi/quota/get";
pub const CLEAR_QUOTA: &str = "/cgi-bin/clear_quota/v2";

/// The daily limit of a token path unless a test sets another ([`StandIn::set_daily_limit`]).
pub fn default_daily_limit(path: &str) -> u64 {
    match path {
        TOKEN => 2000,
        STABLE_TOKEN => 500_000,
        _ => 100_000,
    }
}
/// Quota resets WeChat allows an account per month, unless a test sets another limit.
pub const RESETS_PER_MONTH: u64 = 10;

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
        let token = token.to_string();
        Reply::Token { token, expires_in }
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
        let mut found = self.headers.iter().filter(|(k, _)| *k == name);
        found.next().map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Classic,
    Stable,
    Work,
    /// Open Platform: `component_access_token` (key: component appid).
    Component,
    /// Open Platform: `authorizer_access_token` (key: authorizer appid, secret: component appid).
    Authorizer,
    /// WeCom: `suite_access_token` (key: suite id).
    Suite,
    /// WeCom: `provider_access_token` (key: provider corpid).
    Provider,
    /// WeCom: a corp token from `get_corp_token` (key: corpid, secret: suite id).
    Corp,
}

impl Kind {
    /// A platform's own token, which business calls and ticket paths refuse.
    fn is_platform(self) -> bool {
        matches!(self, Kind::Component | Kind::Suite | Kind::Provider)
    }

    /// A WeCom token, which `getApiQuota` refuses.
    fn is_wecom(self) -> bool {
        matches!(self, Kind::Work | Kind::Suite | Kind::Provider | Kind::Corp)
    }
}

/// A token the stand-in accepts until `expires_at` on the virtual clock.
struct Live {
    kind: Kind,
    /// The appid or corpid it was issued to.
    key: String,
    secret: String,
    seq: u64,
    expires_at: u64,
    /// Its life was cut short because a newer token replaced it: refused with 40001, not 42001.
    cut: bool,
}

#[derive(Default)]
struct State {
    stopped: bool,
    seed: u64,
    seq: u64,
    /// The virtual clock, in seconds.
    now: u64,
    latency: Duration,
    creds: HashMap<String, HashSet<String>>,
    scripts: HashMap<(String, Option<String>), VecDeque<Reply>>,
    gates: HashSet<String>,
    hits: HashMap<String, usize>,
    hits_for: HashMap<(String, String), usize>,
    log: Vec<Request>,
    live: HashMap<String, Live>,
    /// The tokens issued per kind and key, so that replacing one account's token does not
    /// scan every live token (100,000 authorizers in the benchmarks). Entries no longer in
    /// `live` are dropped as they are met.
    issued: HashMap<(Kind, String), Vec<String>>,
    /// Daily quota per (appid, path) set by tests; else [`default_daily_limit`].
    limits: HashMap<(String, String), u64>,
    /// Calls counted against the quota per (appid, path) since the last reset.
    used: HashMap<(String, String), u64>,
    /// Quota resets per appid, and the limit (`None`: [`RESETS_PER_MONTH`]).
    resets: HashMap<String, u64>,
    reset_limit: Option<u64>,
    /// Seconds added to the real time in the `Date` header of every reply.
    date_skew: i64,
    /// Open Platform components and WeCom suites and providers ([`platform`]).
    plat: platform::Platforms,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every hit, gate change, clock change and shutdown.
    cond: Condvar,
    conns: Mutex<HashMap<u64, TcpStream>>,
}

/// Locks, ignoring poisoning: a panicking test thread must not take the stand-in down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Waits until `done` holds (true) or `deadline` passes (false); `None` waits for ever.
    fn wait_until(
        &self,
        deadline: Option<Instant>,
        done: impl Fn(&State) -> bool,
    ) -> (MutexGuard<'_, State>, bool) {
        let mut st = lock(&self.state);
        loop {
            if done(&st) {
                return (st, true);
            }
            let left = deadline.map_or(Duration::from_secs(3600), |at| {
                at.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return (st, false);
            }
            st = self
                .cond
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sleeps for `d` unless the stand-in shuts down first; returns false if it did.
    fn pause(&self, d: Duration) -> bool {
        !self
            .wait_until(Instant::now().checked_add(d), |st| st.stopped)
            .1
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
        let seed = nanos as u64 ^ u64::from(addr.port());
        let state = Mutex::new(State {
            seed,
            ..State::default()
        });
        let shared = Arc::new(Shared {
            state,
            cond: Condvar::new(),
            conns: Mutex::default(),
        });
        let sh = shared.clone();
        let acceptor = Mutex::new(Some(thread::spawn(move || accept_loop(listener, sh))));
        Ok(StandIn {
            addr,
            shared,
            acceptor,
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
        let Some(acceptor) = lock(&self.acceptor).take() else {
            return;
        };
        self.state().stopped = true;
        self.shared.cond.notify_all();
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = acceptor.join();
        for conn in lock(&self.shared.conns).values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Makes `appid` (or a corpid) known with `secret`. Once any account is registered, unknown
    /// ids get 40013 and wrong secrets 40125 (40091 on WeCom). Several secrets per id are allowed.
    pub fn register(&self, id: &str, secret: &str) {
        let mut st = self.state();
        st.creds
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
        let mut st = self.state();
        st.scripts
            .entry((route.to_string(), key))
            .or_default()
            .push_back(reply);
    }

    /// Adds this delay before every reply.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Moves the virtual clock that token lifetimes are measured against (whole seconds).
    pub fn advance(&self, by: Duration) {
        self.state().now += by.as_secs();
    }

    /// Invalidates a token early, as WeCom may do.
    /// Makes the `Date` header of every reply this far from the real time, like a server
    /// whose clock (or the client's) is off.
    pub fn set_date_skew(&self, secs: i64) {
        self.state().date_skew = secs;
    }

    pub fn revoke(&self, token: &str) {
        self.state().live.remove(token);
    }

    /// Sets the daily quota of `path` for `appid`; token fetches beyond it get 45009.
    pub fn set_daily_limit(&self, appid: &str, path: &str, limit: u64) {
        let k = (appid.to_string(), path.to_string());
        self.state().limits.insert(k, limit);
    }

    /// Counts `n` calls to `path` for `appid` that wxtoken did not make: another fetcher.
    pub fn add_used(&self, appid: &str, path: &str, n: u64) {
        let k = (appid.to_string(), path.to_string());
        *self.state().used.entry(k).or_default() += n;
    }

    /// Calls counted against `appid`'s quota of `path` since its last reset.
    pub fn used(&self, appid: &str, path: &str) -> u64 {
        let k = (appid.to_string(), path.to_string());
        self.state().used.get(&k).copied().unwrap_or(0)
    }

    /// How many quota resets WeChat allows per account (the month never ends here).
    pub fn set_reset_limit(&self, n: u64) {
        self.state().reset_limit = Some(n);
    }

    /// Successful quota resets of `appid` so far.
    pub fn resets(&self, appid: &str) -> u64 {
        self.state().resets.get(appid).copied().unwrap_or(0)
    }

    /// Whether the stand-in would accept this access token now.
    pub fn is_valid(&self, token: &str) -> bool {
        self.state().valid(token)
    }

    pub fn hits(&self, route: &str) -> usize {
        self.state().hits.get(route).copied().unwrap_or(0)
    }

    pub fn hits_for(&self, route: &str, key: &str) -> usize {
        let k = (route.to_string(), key.to_string());
        self.state().hits_for.get(&k).copied().unwrap_or(0)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state().log.clone()
    }

    /// Holds requests to `route` (already counted) until [`StandIn::open_gate`].
    pub fn gate(&self, route: &str) {
        self.state().gates.insert(route.to_string());
    }

    pub fn open_gate(&self, route: &str) {
        self.state().gates.remove(route);
        self.shared.cond.notify_all();
    }

    /// Waits until `route` has had at least `n` hits; false on timeout.
    pub fn wait_for_hits(&self, route: &str, n: usize, timeout: Duration) -> bool {
        let enough = |st: &State| st.hits.get(route).is_some_and(|&h| h >= n);
        self.shared
            .wait_until(Some(Instant::now() + timeout), enough)
            .1
    }
}

impl StandIn {
    /// The scripted replies nobody consumed, as `(route, key)` with how many are left.
    pub fn unused_scripts(&self) -> Vec<(String, Option<String>, usize)> {
        let mut left: Vec<_> = self
            .state()
            .scripts
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|((route, key), q)| (route.clone(), key.clone(), q.len()))
            .collect();
        left.sort();
        left
    }

    /// Forgets every queued reply, for a test that leaves some unused on purpose.
    pub fn discard_scripts(&self) {
        self.state().scripts.clear();
    }
}

impl Drop for StandIn {
    /// Stops the server, and fails the test if a scripted reply was never used: a test
    /// that scripts an answer nobody asks for does not test what it says it does.
    fn drop(&mut self) {
        self.shutdown();
        let unused = self.unused_scripts();
        if !unused.is_empty() && !thread::panicking() {
            panic!("stand-in: scripted replies never consumed (route, account, count): {unused:?}");
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    for (id, conn) in listener.incoming().enumerate() {
        if lock(&sh.state).stopped {
            break;
        }
        let Ok(stream) = conn else {
            // Out of file descriptors or similar: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let sh = sh.clone();
        thread::spawn(move || {
            if let Ok(clone) = stream.try_clone() {
                lock(&sh.conns).insert(id as u64, clone);
            }
            let _ = serve(&sh, stream);
            lock(&sh.conns).remove(&(id as u64));
        });
    }
}

fn serve(sh: &Shared, stream: TcpStream) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    // The head and the body go out in two writes; without this, Nagle's algorithm holds
    // the body back until the client's delayed ACK, ~40 ms on every reused connection.
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while !lock(&sh.state).stopped {
        let (req, close) = match read_request(&mut reader) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(e) => return write_response(&mut out, 400, "text/plain", e.to_string(), true, 0),
        };
        if !handle(sh, req, &mut out, close)? || close {
            break;
        }
    }
    Ok(())
}

/// Reads one request; `None` on a clean end of stream. The flag says the client wants to close.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Option<(Request, bool)>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    while line.trim().is_empty() {
        line.clear();
        if r.by_ref().take(8192).read_line(&mut line)? == 0 {
            return Ok(None);
        }
    }
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [method, target, version] = parts[..] else {
        return Err(bad("malformed request line"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: parse_query(query),
        headers: Vec::new(),
        body: String::new(),
    };
    let http10 = version == "HTTP/1.0";
    loop {
        let mut line = String::new();
        if r.by_ref().take(8192).read_line(&mut line)? == 0 {
            return Err(bad("end of stream inside headers"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        req.headers
            .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let conn = req.header("connection").unwrap_or("").to_ascii_lowercase();
    let close = conn.contains("close") || (http10 && !conn.contains("keep-alive"));
    if req.header("transfer-encoding").is_some() {
        // wxtoken's client always sends a sized body; keep the stand-in simple.
        return Err(bad("chunked request bodies are not supported"));
    }
    let len = req.header("content-length").unwrap_or("0");
    let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
    if len > MAX_BODY {
        return Err(bad("body too large"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
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
    let hex = |i: usize| b.get(i).and_then(|&c| (c as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Parses a flat JSON object; strings are unescaped, other scalars kept as their text.
/// Nested objects and arrays are rejected, which is all the stable-token body needs.
pub fn parse_flat_json(s: &str) -> Option<HashMap<String, String>> {
    let skip_ws = |p: &mut Chars| while p.next_if(|c| c.is_whitespace()).is_some() {};
    let mut p = s.trim().chars().peekable();
    let mut map = HashMap::new();
    p.next_if_eq(&'{')?;
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
                let scalar = ["true", "false", "null"].contains(&v.as_str());
                (scalar || v.parse::<f64>().is_ok()).then_some(v)?
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
    p.next().is_none().then_some(map)
}

fn json_string(p: &mut Chars) -> Option<String> {
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
            '"' | '\\' => out.extend(['\\', c]),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn handle(sh: &Shared, req: Request, out: &mut TcpStream, close: bool) -> io::Result<bool> {
    let route = req.path.clone();
    // The reply is taken in the same critical section as the hit is counted, unless the
    // route is gated: a test that saw the hit then knows its scripted reply is spent.
    let (key, early) = {
        let mut st = lock(&sh.state);
        let key = st.key_for(&req);
        *st.hits.entry(route.clone()).or_default() += 1;
        if let Some(k) = &key {
            *st.hits_for.entry((route.clone(), k.clone())).or_default() += 1;
            // Every call to a token path counts against the appid's quota, as on WeChat.
            if matches!(route.as_str(), TOKEN | STABLE_TOKEN) {
                *st.used.entry((k.clone(), route.clone())).or_default() += 1;
            }
        }
        st.log.push(req.clone());
        let early = (!st.gates.contains(&route)).then(|| st.pick(&route, key.as_deref(), &req));
        (key, early)
    };
    sh.cond.notify_all();
    let (reply, latency) = {
        let (mut st, _) = sh.wait_until(None, |st| {
            early.is_some() || st.stopped || !st.gates.contains(&route)
        });
        let reply = match early {
            Some(reply) => reply,
            None => st.pick(&route, key.as_deref(), &req),
        };
        (reply, st.latency)
    };
    if !sh.pause(latency) {
        return Ok(false);
    }
    send(sh, out, &route, reply, close)
}

impl State {
    /// The next scripted reply for this request, or the default behaviour.
    fn pick(&mut self, route: &str, key: Option<&str>, req: &Request) -> Reply {
        match self.scripted(route, key) {
            Some(reply) if is_platform_route(route) => {
                self.platform_scripted(route, key, reply, req)
            }
            Some(reply) => {
                if let (Reply::Token { token, expires_in }, Some(kind)) = (&reply, kind_of(route)) {
                    self.adopt(token, kind, key.unwrap_or(""), "", *expires_in);
                }
                reply
            }
            None => self.default_reply(req),
        }
    }
}

fn kind_of(route: &str) -> Option<Kind> {
    match route {
        TOKEN => Some(Kind::Classic),
        STABLE_TOKEN => Some(Kind::Stable),
        WORK_TOKEN => Some(Kind::Work),
        _ => None,
    }
}

const JSON: &str = "application/json; encoding=utf-8";

/// Writes `reply`; returns whether the connection may serve another request.
fn send(
    sh: &Shared,
    out: &mut TcpStream,
    route: &str,
    reply: Reply,
    close: bool,
) -> io::Result<bool> {
    let skew = lock(&sh.state).date_skew;
    let (code, ctype, body) = match reply {
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
        Reply::Oversized(n) => return stream_oversized(out, n, close, skew).map(|()| true),
        Reply::Status(code, body) => (code, "text/html; charset=utf-8", body),
        Reply::Token { token, expires_in } => {
            const OK: &str = r#""errcode":0,"errmsg":"ok","#;
            let (ok, field) = match route {
                TICKET | WORK_CORP_TICKET | WORK_AGENT_TICKET => (OK, "ticket"),
                WORK_TOKEN => (OK, "access_token"),
                _ => ("", "access_token"),
            };
            (
                200,
                JSON,
                format!(r#"{{{ok}"{field}":"{token}","expires_in":{expires_in}}}"#),
            )
        }
        Reply::Errcode(code, msg) => (
            200,
            JSON,
            format!(r#"{{"errcode":{code},"errmsg":"{}"}}"#, json_escape(&msg)),
        ),
        Reply::Body(body) => (200, JSON, body),
        Reply::Empty => (200, JSON, String::new()),
    };
    write_response(out, code, ctype, body, close, skew).map(|()| true)
}

fn write_response(
    out: &mut impl Write,
    code: u16,
    ctype: &str,
    body: String,
    close: bool,
    skew: i64,
) -> io::Result<()> {
    write_head(out, code, ctype, body.len() as u64, close, skew)?;
    out.write_all(body.as_bytes())?;
    out.flush()
}

fn write_head(
    out: &mut impl Write,
    code: u16,
    ctype: &str,
    len: u64,
    close: bool,
    skew: i64,
) -> io::Result<()> {
    // Clients ignore the reason phrase; any token will do.
    let reason = if code == 200 { "OK" } else { "Error" };
    let conn = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nDate: {}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: {conn}\r\n\r\n",
        http_date(unix_now() + skew)
    );
    out.write_all(head.as_bytes())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An HTTP date (RFC 7231 IMF-fixdate) for Unix time `t`, without a date library: the
/// stand-in uses the standard library only.
pub fn http_date(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Streams `n` bytes that start like a token reply, without holding them in memory.
/// A client that hangs up early ends the stream with an error, which the caller ignores.
fn stream_oversized(out: &mut TcpStream, n: u64, close: bool, skew: i64) -> io::Result<()> {
    write_head(out, 200, JSON, n, close, skew)?;
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
        if let Some(key) = self.platform_key(req) {
            return key;
        }
        let q = |k: &str| req.query.get(k).filter(|v| !v.is_empty()).cloned();
        match req.path.as_str() {
            TOKEN => q("appid"),
            WORK_TOKEN => q("corpid"),
            STABLE_TOKEN | CLEAR_QUOTA => parse_flat_json(&req.body)?
                .remove("appid")
                .filter(|v| !v.is_empty()),
            _ => Some(self.live.get(&q("access_token")?)?.key.clone()),
        }
    }

    fn scripted(&mut self, route: &str, key: Option<&str>) -> Option<Reply> {
        let mut pop = |k: Option<&str>| {
            let k = (route.to_string(), k.map(str::to_string));
            self.scripts.get_mut(&k)?.pop_front()
        };
        key.and_then(|k| pop(Some(k))).or_else(|| pop(None))
    }

    fn valid(&self, token: &str) -> bool {
        self.live
            .get(token)
            .is_some_and(|l| l.expires_at > self.now)
    }

    /// Valid, and a token business calls accept: not a component, suite or provider token.
    fn tenant_valid(&self, token: &str) -> bool {
        self.valid(token) && self.live.get(token).is_some_and(|l| !l.kind.is_platform())
    }

    /// A unique token-like string: 128 chars of `[A-Za-z0-9_-]` that start with a counter.
    fn mint(&mut self, tag: &str) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        self.seq += 1;
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

    fn err(&mut self, code: i64, msg: &str) -> Reply {
        self.seq += 1;
        let rid = format!("{:08x}-{:08x}", self.seed as u32, self.seq as u32);
        Reply::Errcode(code, format!("{msg} rid: {rid}"))
    }

    /// Makes a token valid for tickets (and, for WeCom, reusable by the same secret).
    fn adopt(&mut self, token: &str, kind: Kind, key: &str, secret: &str, expires_in: u64) {
        self.seq += 1;
        let (seq, expires_at) = (self.seq, self.now + expires_in);
        let (key, secret) = (key.to_string(), secret.to_string());
        (self.issued.entry((kind, key.clone())).or_default()).push(token.to_string());
        self.live.insert(
            token.to_string(),
            Live {
                kind,
                key,
                secret,
                seq,
                expires_at,
                cut: false,
            },
        );
    }

    fn issue(&mut self, kind: Kind, key: &str, secret: &str) -> Reply {
        let tag = match kind {
            Kind::Classic => "AT",
            Kind::Stable => "ST",
            Kind::Work => "WK",
            Kind::Component => "CT",
            Kind::Authorizer => "AA",
            Kind::Suite => "SU",
            Kind::Provider => "PV",
            Kind::Corp => "CP",
        };
        let token = self.mint(tag);
        self.adopt(&token, kind, key, secret, LIFETIME);
        Reply::Token {
            token,
            expires_in: LIFETIME,
        }
    }

    /// The newest unexpired token of this kind for this account (and secret, if given).
    fn current(&self, kind: Kind, key: &str, secret: Option<&str>) -> Option<(String, u64)> {
        let mine = |l: &&Live| l.kind == kind && l.key == key && l.expires_at > self.now;
        (self.live.iter())
            .filter(|(_, l)| mine(l) && secret.is_none_or(|s| l.secret == s))
            .max_by_key(|(_, l)| l.seq)
            .map(|(t, l)| (t.clone(), l.expires_at - self.now))
    }

    /// Checks that both are present, then (if any account is registered) the pair itself.
    fn check_creds(&mut self, id: &str, secret: &str, work: bool) -> Result<(), Reply> {
        let (id_name, secret_name, bad_secret) = match work {
            true => ("corpid", "corpsecret", 40091),
            false => ("appid", "appsecret", 40125),
        };
        if id.is_empty() {
            return Err(self.err(41002, &format!("{id_name} missing")));
        }
        if secret.is_empty() {
            return Err(self.err(41004, &format!("{secret_name} missing")));
        }
        if work && let Some(known) = self.customized_creds(id, secret) {
            return known;
        }
        match self.creds.get(id) {
            _ if self.creds.is_empty() => Ok(()),
            None => Err(self.err(40013, &format!("invalid {id_name}"))),
            Some(known) if known.contains(secret) => Ok(()),
            Some(_) => Err(self.err(bad_secret, &format!("invalid {secret_name}"))),
        }
    }

    fn default_reply(&mut self, req: &Request) -> Reply {
        let q = |k: &str| req.query.get(k).map_or("", String::as_str);
        let result = match req.path.as_str() {
            TOKEN => self.classic(q("grant_type"), q("appid"), q("secret")),
            STABLE_TOKEN => self.stable(req),
            WORK_TOKEN => self.work(q("corpid"), q("corpsecret")),
            TICKET => self.ticket(q("access_token"), Some(&["jsapi", "wx_card"]), q("type")),
            WORK_AGENT_TICKET => self.ticket(q("access_token"), Some(&["agent_config"]), q("type")),
            WORK_CORP_TICKET => self.ticket(q("access_token"), None, ""),
            MENU_GET | WORK_USER_GET => self.business(q("access_token")),
            QUOTA_GET => self.quota_get(req),
            CLEAR_QUOTA => self.clear_quota(req),
            _ => match self.platform_reply(req) {
                Some(result) => result,
                None => Err(Reply::Status(404, format!("no such path: {}\n", req.path))),
            },
        };
        result.unwrap_or_else(|e| e)
    }

    fn classic(&mut self, grant_type: &str, appid: &str, secret: &str) -> Result<Reply, Reply> {
        if grant_type != "client_credential" {
            return Err(self.err(40002, "invalid grant_type"));
        }
        self.check_creds(appid, secret, false)?;
        self.within_quota(appid, TOKEN)?;
        // Each fetch invalidates older tokens; only the newest overlaps with the one issued now.
        let newest = self.current(Kind::Classic, appid, None).map(|(t, _)| t);
        let retired = |t: &String, l: &Live| {
            l.kind == Kind::Classic && l.key == appid && Some(t) != newest.as_ref()
        };
        self.live.retain(|t, l| !retired(t, l));
        Ok(self.issue(Kind::Classic, appid, secret))
    }

    fn stable(&mut self, req: &Request) -> Result<Reply, Reply> {
        let body = self.json_post(req)?;
        let b = |k: &str| body.get(k).map_or("", String::as_str);
        if b("grant_type") != "client_credential" {
            return Err(self.err(40002, "invalid grant_type"));
        }
        let (appid, secret) = (b("appid"), b("secret"));
        self.check_creds(appid, secret, false)?;
        self.within_quota(appid, STABLE_TOKEN)?;
        if b("force_refresh") == "true" {
            self.live
                .retain(|_, l| !(l.kind == Kind::Stable && l.key == appid));
        } else if let Some((token, left)) = self.current(Kind::Stable, appid, None)
            && left > STABLE_WINDOW
        {
            return Ok(Reply::Token {
                token,
                expires_in: left,
            });
        }
        Ok(self.issue(Kind::Stable, appid, secret))
    }

    /// The flat JSON body of a POST; WeChat answers 43002 to another method.
    fn json_post(&mut self, req: &Request) -> Result<HashMap<String, String>, Reply> {
        if req.method != "POST" {
            return Err(self.err(43002, "require POST method"));
        }
        parse_flat_json(&req.body).ok_or_else(|| self.err(47001, "data format error"))
    }

    fn limit(&self, appid: &str, path: &str) -> u64 {
        let k = (appid.to_string(), path.to_string());
        self.limits
            .get(&k)
            .copied()
            .unwrap_or_else(|| default_daily_limit(path))
    }

    /// 45009 once the calls counted today (this one included) exceed the daily limit.
    fn within_quota(&mut self, appid: &str, path: &str) -> Result<(), Reply> {
        let used = self.used.get(&(appid.to_string(), path.to_string()));
        if used.copied().unwrap_or(0) > self.limit(appid, path) {
            return Err(self.err(45009, "reach max api daily quota limit"));
        }
        Ok(())
    }

    /// `getApiQuota`: POST with the token in the query and `{"cgi_path": ...}` as the body.
    fn quota_get(&mut self, req: &Request) -> Result<Reply, Reply> {
        let body = self.json_post(req)?;
        let token = req.query.get("access_token").map_or("", String::as_str);
        if token.is_empty() {
            return Err(self.err(41001, "access_token missing"));
        }
        let owner = match self.live.get(token) {
            Some(l) if l.expires_at > self.now && !l.kind.is_wecom() => l.key.clone(),
            _ => {
                let msg = "invalid credential, access_token is invalid or not latest";
                return Err(self.err(40001, msg));
            }
        };
        let path = body.get("cgi_path").map_or("", String::as_str);
        if !path.starts_with('/') {
            return Err(self.err(76003, "invalid cgi_path"));
        }
        if !matches!(
            path,
            TOKEN | STABLE_TOKEN | TICKET | "/cgi-bin/message/custom/send"
        ) {
            return Err(self.err(76021, "cgi_path not found, please check"));
        }
        let limit = self.limit(&owner, path);
        let used = self.used.get(&(owner, path.to_string()));
        let used = used.copied().unwrap_or(0).min(limit);
        let remain = limit - used;
        Ok(Reply::Body(format!(
            r#"{{"errcode":0,"errmsg":"ok","quota":{{"daily_limit":{limit},"used":{used},"remain":{remain}}},"rate_limit":{{"call_count":100,"refresh_second":60}}}}"#
        )))
    }

    /// `clearQuotaByAppSecret`: POST with appid and appsecret in a JSON body.
    fn clear_quota(&mut self, req: &Request) -> Result<Reply, Reply> {
        let body = self.json_post(req)?;
        let b = |k: &str| body.get(k).map_or("", String::as_str);
        let (appid, secret) = (b("appid"), b("appsecret"));
        self.check_creds(appid, secret, false)?;
        let done = self.resets.get(appid).copied().unwrap_or(0);
        if done >= self.reset_limit.unwrap_or(RESETS_PER_MONTH) {
            let msg = "forbid to clear quota because of reaching the limit";
            return Err(self.err(48006, msg));
        }
        self.resets.insert(appid.to_string(), done + 1);
        self.used.retain(|(id, _), _| id != appid);
        Ok(Reply::Body(r#"{"errcode":0,"errmsg":"ok"}"#.to_string()))
    }

    fn work(&mut self, corpid: &str, secret: &str) -> Result<Reply, Reply> {
        self.check_creds(corpid, secret, true)?;
        Ok(match self.current(Kind::Work, corpid, Some(secret)) {
            Some((token, expires_in)) => Reply::Token { token, expires_in },
            None => self.issue(Kind::Work, corpid, secret),
        })
    }

    fn business(&mut self, token: &str) -> Result<Reply, Reply> {
        if token.is_empty() {
            return Err(self.err(41001, "access_token missing"));
        }
        if !self.tenant_valid(token) {
            let msg = "invalid credential, access_token is invalid or not latest";
            return Err(self.err(40001, msg));
        }
        Ok(Reply::Body(r#"{"errcode":0,"errmsg":"ok"}"#.to_string()))
    }

    fn ticket(&mut self, token: &str, types: Option<&[&str]>, ty: &str) -> Result<Reply, Reply> {
        if token.is_empty() {
            return Err(self.err(41001, "access_token missing"));
        }
        if !self.tenant_valid(token) {
            let msg = "invalid credential, access_token is invalid or not latest";
            return Err(self.err(40001, msg));
        }
        if types.is_some_and(|t| !t.contains(&ty)) {
            return Err(self.err(40097, "invalid args"));
        }
        Ok(Reply::Token {
            token: self.mint("TK"),
            expires_in: LIFETIME,
        })
    }
}
