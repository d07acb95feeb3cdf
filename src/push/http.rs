//! One HTTP/1.1 request and its answer, for `wxtoken receive` run inetd-style (the
//! connection on stdin and stdout, one request per process, `Connection: close`).
//!
//! Only what WeChat sends is accepted: `GET` (WeCom's URL verification) or `POST` with a
//! `Content-Length` (a push), on `/wxtoken/component/{APPID}` or `/wxtoken/suite/{SUITEID}`.
//! Everything is bounded before it is read: the header block (`Limits::max_header`), the
//! body (`Limits::max_body`, refused on its Content-Length alone) and the time (the
//! caller's reader times out each read; `Limits::deadline` bounds them all, against a
//! client that trickles a byte at a time).
//!
//! Query values are percent-decoded, and `+` is kept as `+`, not read as a space: none of
//! the four parameters can hold a space (hex, digits, base64), WeCom sends its base64
//! `echostr` percent-encoded (`%2B`, `%2F`, `%3D`, which this decodes the same as the
//! SDKs' urldecode), and a `+` that arrives unencoded can only be base64's own.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Instant;

/// How much of a request is read, and until when.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The request line and the headers, with their final blank line.
    pub max_header: usize,
    pub max_body: usize,
    /// When to give up on the whole request, whatever each read does.
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header: 8 * 1024,
            max_body: super::xml::MAX_BODY,
            deadline: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// Which receiver the request is for, from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/wxtoken/component/{APPID}`: an Open Platform component.
    Component(String),
    /// `/wxtoken/suite/{SUITEID}`: a WeCom suite (or 代开发 template).
    Suite(String),
}

/// The query parameters WXBizMsgCrypt uses, percent-decoded; the others are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub msg_signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub echostr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    pub route: Route,
    pub query: Query,
    /// Empty for a GET without a body.
    pub body: Vec<u8>,
}

/// Why a request was not read. Each maps to the status to answer with (`status`); the
/// messages never quote the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.x, a bad header, a bad Content-Length or query, or the body ended early.
    BadRequest(&'static str),
    HeaderTooLarge,
    BodyTooLarge,
    /// A POST without Content-Length, or any Transfer-Encoding (chunked included).
    LengthRequired,
    MethodNotAllowed,
    NotFound,
    Timeout,
    /// The connection failed (not a timeout).
    Io(io::ErrorKind),
}

impl HttpError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) | HttpError::Io(_) => 400,
            HttpError::NotFound => 404,
            HttpError::MethodNotAllowed => 405,
            HttpError::Timeout => 408,
            HttpError::LengthRequired => 411,
            HttpError::BodyTooLarge => 413,
            HttpError::HeaderTooLarge => 431,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::BadRequest(why) => write!(f, "bad request: {why}"),
            HttpError::HeaderTooLarge => f.write_str("the request headers are too large"),
            HttpError::BodyTooLarge => f.write_str("the request body is too large"),
            HttpError::LengthRequired => {
                f.write_str("the request has no Content-Length (chunked bodies are not accepted)")
            }
            HttpError::MethodNotAllowed => f.write_str("only GET and POST are accepted"),
            HttpError::NotFound => f.write_str(
                "no receiver at this path (/wxtoken/component/APPID or /wxtoken/suite/SUITEID)",
            ),
            HttpError::Timeout => f.write_str("the request was not received in time"),
            HttpError::Io(kind) => write!(f, "could not read the request: {kind}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Most headers a request may have; WeChat sends fewer than 10.
const MAX_HEADERS: usize = 32;

/// Reads one request from `reader`. Bytes after the body (a pipelined second request) are
/// left unread or ignored: the caller answers this one and closes.
pub fn read_request<R: Read>(reader: &mut R, limits: Limits) -> Result<HttpRequest, HttpError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (head_len, method, target, content_length) = loop {
        if let Some(parsed) = parse_head(&buf)? {
            break parsed;
        }
        if buf.len() >= limits.max_header {
            return Err(HttpError::HeaderTooLarge);
        }
        // Never read past the header limit: the rest may be a body we would refuse.
        let want = (limits.max_header - buf.len()).min(chunk.len());
        let n = read_some(reader, &mut chunk[..want], limits.deadline)?;
        if n == 0 {
            return Err(HttpError::BadRequest(if buf.is_empty() {
                "no request"
            } else {
                "the headers end early"
            }));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };

    let method = match method.as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        _ => return Err(HttpError::MethodNotAllowed),
    };
    let (path, query) = split_target(&target);
    let route = route(path)?;
    let query = parse_query(query)?;
    let length = match (content_length, method) {
        (Some(len), _) => len,
        (None, Method::Get) => 0,
        (None, Method::Post) => return Err(HttpError::LengthRequired),
    };
    if length > limits.max_body as u64 {
        return Err(HttpError::BodyTooLarge);
    }
    // Fits in usize: at most max_body.
    let length = length as usize;
    let mut body = buf.get(head_len..).unwrap_or_default().to_vec();
    body.truncate(length);
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        let n = read_some(reader, &mut chunk[..want], limits.deadline)?;
        if n == 0 {
            return Err(HttpError::BadRequest(
                "the body is shorter than its Content-Length",
            ));
        }
        body.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Ok(HttpRequest {
        method,
        route,
        query,
        body,
    })
}

/// One read, retried on EINTR; a timeout (or the deadline passed) is `Timeout`.
fn read_some<R: Read>(
    reader: &mut R,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<usize, HttpError> {
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(HttpError::Timeout);
        }
        match reader.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HttpError::Timeout);
            }
            Err(e) => return Err(HttpError::Io(e.kind())),
        }
    }
}

/// The header block, once complete: its length, the method, the target and the
/// Content-Length. `None` while more bytes are needed.
type Head = (usize, String, String, Option<u64>);

fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeaderTooLarge),
        Err(_) => return Err(HttpError::BadRequest("not an HTTP/1.x request")),
    };
    let mut content_length: Option<u64> = None;
    for header in req.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::LengthRequired);
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let len = parse_length(header.value)?;
            // Two different lengths: which one a proxy used is anyone's guess (smuggling).
            if content_length.is_some_and(|prev| prev != len) {
                return Err(HttpError::BadRequest("conflicting Content-Length headers"));
            }
            content_length = Some(len);
        }
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    Ok(Some((head_len, method, target, content_length)))
}

/// Digits only: no sign, no list, no spaces inside.
fn parse_length(value: &[u8]) -> Result<u64, HttpError> {
    let text = std::str::from_utf8(value)
        .map(str::trim)
        .map_err(|_| HttpError::BadRequest("bad Content-Length"))?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadRequest("bad Content-Length"));
    }
    text.parse()
        .map_err(|_| HttpError::BadRequest("bad Content-Length"))
}

/// Path and query of a request target; an absolute-form target (`http://host/path`, as a
/// proxy may send) loses its scheme and authority.
fn split_target(target: &str) -> (&str, &str) {
    let target = ["http://", "https://"]
        .iter()
        .find_map(|scheme| target.strip_prefix(scheme))
        .map_or(target, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
    let target = target.split('#').next().unwrap_or_default();
    target.split_once('?').unwrap_or((target, ""))
}

fn route(path: &str) -> Result<Route, HttpError> {
    let mut parts = path.split('/');
    let (Some(""), Some("wxtoken"), Some(kind), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(HttpError::NotFound);
    };
    // Appids (wx…), suite ids (ww…, dk…): letters, digits, and room for `_`/`-`.
    let valid_id = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_id {
        return Err(HttpError::NotFound);
    }
    match kind {
        "component" => Ok(Route::Component(id.to_string())),
        "suite" => Ok(Route::Suite(id.to_string())),
        _ => Err(HttpError::NotFound),
    }
}

fn parse_query(query: &str) -> Result<Query, HttpError> {
    let mut out = Query::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match percent_decode(name)?.as_str() {
            "msg_signature" => &mut out.msg_signature,
            "timestamp" => &mut out.timestamp,
            "nonce" => &mut out.nonce,
            "echostr" => &mut out.echostr,
            _ => continue,
        };
        if slot.is_some() {
            return Err(HttpError::BadRequest("a query parameter appears twice"));
        }
        *slot = Some(percent_decode(value)?);
    }
    Ok(out)
}

/// `%XX` decoded, everything else (`+` included) kept; the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, HttpError> {
    const BAD: HttpError = HttpError::BadRequest("bad percent-encoding in the query");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BAD)?;
            let hex = std::str::from_utf8(hex).map_err(|_| BAD)?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return Err(BAD);
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| BAD)?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BAD)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes the one response of the connection: `body` exactly as given (WeCom's URL
/// verification wants the plaintext with no newline), as text/plain, then close.
pub fn write_response<W: Write>(w: &mut W, status: u16, body: &[u8]) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        head.push_str("Allow: GET, POST\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::time::Duration;

    fn read(raw: &[u8]) -> Result<HttpRequest, HttpError> {
        read_request(&mut Cursor::new(raw.to_vec()), Limits::default())
    }

    /// Gives its bytes a few at a time, then fails every read with `then`.
    struct Slow {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        then: io::ErrorKind,
    }

    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= self.data.len() {
                return Err(io::Error::from(self.then));
            }
            let n = self.step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn reads_a_push() {
        let body = b"<xml><AppId>wx1</AppId><Encrypt>abc</Encrypt></xml>";
        let raw = format!(
            "POST /wxtoken/component/wx0123456789abcdef?signature=x&timestamp=1413192605&nonce=1234567890\
             &openid=o&encrypt_type=aes&msg_signature=046ad946 HTTP/1.1\r\nHost: h\r\n\
             Content-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(body);
        let req = read(&raw).unwrap();
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.route, Route::Component("wx0123456789abcdef".into()));
        assert_eq!(
            req.query,
            Query {
                msg_signature: Some("046ad946".into()),
                timestamp: Some("1413192605".into()),
                nonce: Some("1234567890".into()),
                echostr: None,
            }
        );
        assert_eq!(req.body, body);
    }

    #[test]
    fn reads_a_wecom_verification_get() {
        // A base64 echostr as WeCom sends it, percent-encoded; a bare `+` stays a `+`.
        let req = read(
            b"GET /wxtoken/suite/ww4asffe99e54c0f4c?msg_signature=5c45ff&timestamp=1409659589&nonce=263014780\
              &echostr=P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D+x HTTP/1.1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.route, Route::Suite("ww4asffe99e54c0f4c".into()));
        assert_eq!(
            req.query.echostr.as_deref(),
            Some(
                "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==+x"
            )
        );
        assert!(req.body.is_empty());
    }

    #[test]
    fn absolute_targets_and_fragments() {
        let req = read(b"GET http://example.com/wxtoken/suite/dk1?nonce=1#frag HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(req.route, Route::Suite("dk1".into()));
        assert_eq!(req.query.nonce.as_deref(), Some("1"));
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/",
            "/wxtoken",
            "/wxtoken/component",
            "/wxtoken/component/",
            "/wxtoken/component/wx1/",
            "/wxtoken/component/wx1/x",
            "/wxtoken/other/wx1",
            "/other/component/wx1",
            "/wxtoken/component/wx%31",
            "/wxtoken/suite/..",
        ] {
            let raw = format!("GET {path} HTTP/1.1\r\n\r\n");
            assert_eq!(
                read(raw.as_bytes()).unwrap_err(),
                HttpError::NotFound,
                "{path}"
            );
        }
    }

    #[test]
    fn other_methods_are_405() {
        for method in ["PUT", "HEAD", "DELETE", "OPTIONS", "get"] {
            let raw = format!("{method} /wxtoken/suite/s HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
            let err = read(raw.as_bytes()).unwrap_err();
            assert_eq!(err, HttpError::MethodNotAllowed, "{method}");
            assert_eq!(err.status(), 405);
        }
    }

    #[test]
    fn bodies_need_a_content_length() {
        let err = read(b"POST /wxtoken/suite/s HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!(
            (err.clone(), err.status()),
            (HttpError::LengthRequired, 411)
        );
        let chunked = b"POST /wxtoken/suite/s HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(read(chunked).unwrap_err(), HttpError::LengthRequired);
        let both = b"POST /wxtoken/suite/s HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello";
        assert_eq!(read(both).unwrap_err(), HttpError::LengthRequired);
        for bad in ["-1", "+5", "5, 5", "0x10", "", "99999999999999999999999"] {
            let raw = format!("POST /wxtoken/suite/s HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            let err = read(raw.as_bytes()).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}: {err}");
        }
        let twice =
            b"POST /wxtoken/suite/s HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(read(twice).unwrap_err().status(), 400);
    }

    #[test]
    fn oversize_content_length_is_413_before_the_body_is_read() {
        // Nothing follows the headers: reading the body would fail, so 413 came first.
        let raw = format!(
            "POST /wxtoken/suite/s HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            64 * 1024 + 1
        );
        let mut slow = Slow {
            data: raw.into_bytes(),
            pos: 0,
            step: 7,
            then: io::ErrorKind::TimedOut,
        };
        let err = read_request(&mut slow, Limits::default()).unwrap_err();
        assert_eq!((err.clone(), err.status()), (HttpError::BodyTooLarge, 413));
        let fits = format!(
            "POST /wxtoken/suite/s HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            64 * 1024
        );
        let mut fits = fits.into_bytes();
        fits.extend(std::iter::repeat_n(b'x', 64 * 1024));
        assert_eq!(read(&fits).unwrap().body.len(), 64 * 1024);
    }

    #[test]
    fn oversize_headers_are_431() {
        let raw = format!(
            "GET /wxtoken/suite/s HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(8 * 1024)
        );
        let err = read(raw.as_bytes()).unwrap_err();
        assert_eq!(
            (err.clone(), err.status()),
            (HttpError::HeaderTooLarge, 431)
        );
        let many: String = (0..40).map(|i| format!("X-{i}: 1\r\n")).collect();
        let raw = format!("GET /wxtoken/suite/s HTTP/1.1\r\n{many}\r\n");
        assert_eq!(read(raw.as_bytes()).unwrap_err(), HttpError::HeaderTooLarge);
    }

    #[test]
    fn truncated_requests_are_400() {
        assert_eq!(read(b"").unwrap_err(), HttpError::BadRequest("no request"));
        assert_eq!(
            read(b"POST /wxtoken/suite/s HTTP/1.1\r\nContent-Le")
                .unwrap_err()
                .status(),
            400
        );
        let err =
            read(b"POST /wxtoken/suite/s HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort").unwrap_err();
        assert_eq!(
            (err.clone(), err.status()),
            (
                HttpError::BadRequest("the body is shorter than its Content-Length"),
                400
            )
        );
        assert_eq!(
            read(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            read(b"GET /wxtoken/suite/s HTTP/2.0\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn a_silent_or_slow_client_is_408() {
        let mut silent = Slow {
            data: b"POST /wxtoken/suite/s HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
            pos: 0,
            step: 1000,
            then: io::ErrorKind::TimedOut,
        };
        let err = read_request(&mut silent, Limits::default()).unwrap_err();
        assert_eq!((err.clone(), err.status()), (HttpError::Timeout, 408));
        let mut would_block = Slow {
            data: b"GET /wxt".to_vec(),
            pos: 0,
            step: 3,
            then: io::ErrorKind::WouldBlock,
        };
        assert_eq!(
            read_request(&mut would_block, Limits::default()).unwrap_err(),
            HttpError::Timeout
        );
        // Each read is quick, but the whole request takes too long.
        let mut trickle = Slow {
            data: b"GET /wxtoken/suite/s HTTP/1.1\r\n\r\n".to_vec(),
            pos: 0,
            step: 1,
            then: io::ErrorKind::UnexpectedEof,
        };
        let limits = Limits {
            deadline: Some(Instant::now() - Duration::from_millis(1)),
            ..Limits::default()
        };
        assert_eq!(
            read_request(&mut trickle, limits).unwrap_err(),
            HttpError::Timeout
        );
        let mut broken = Slow {
            data: Vec::new(),
            pos: 0,
            step: 1,
            then: io::ErrorKind::ConnectionReset,
        };
        assert_eq!(
            read_request(&mut broken, Limits::default()).unwrap_err(),
            HttpError::Io(io::ErrorKind::ConnectionReset)
        );
    }

    #[test]
    fn a_request_in_one_byte_reads_is_whole() {
        let mut slow = Slow {
            data: b"POST /wxtoken/component/wx1?nonce=%E4%BD%A0 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcEXTRA".to_vec(),
            pos: 0,
            step: 1,
            then: io::ErrorKind::TimedOut,
        };
        let req = read_request(&mut slow, Limits::default()).unwrap();
        assert_eq!(req.body, b"abc");
        assert_eq!(req.query.nonce.as_deref(), Some("你"));
    }

    #[test]
    fn bad_queries_are_400() {
        for q in [
            "nonce=%",
            "nonce=%4",
            "nonce=%zz",
            "nonce=%ff",
            "nonce=1&nonce=2",
        ] {
            let raw = format!("GET /wxtoken/suite/s?{q} HTTP/1.1\r\n\r\n");
            assert_eq!(read(raw.as_bytes()).unwrap_err().status(), 400, "{q}");
        }
        // Parameters that are not ours are ignored, whatever they hold.
        let req =
            read(b"GET /wxtoken/suite/s?x=%zz&&flag&nonce=1&other=1 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(req.query.nonce.as_deref(), Some("1"));
    }

    #[test]
    fn writes_one_closing_response() {
        let mut out = Vec::new();
        write_response(&mut out, 200, b"success").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 7\r\n\
             Connection: close\r\n\r\nsuccess"
        );
        let mut out = Vec::new();
        write_response(&mut out, HttpError::MethodNotAllowed.status(), b"").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("Allow: GET, POST\r\n"), "{text}");
    }

    #[test]
    fn errors_do_not_quote_the_request() {
        let err = read(b"GET /wxtoken/suite/s?echostr=%zzsecret HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
