//! Where a PostgreSQL store is and how to log in: a libpq connection URL plus libpq's
//! environment (`PG*` variables, `~/.pgpass`), parsed here because the Rust client reads
//! neither and knows fewer URL options than libpq. A URL copied from `psql` must work.
//!
//! Pure except for `PgConfig::from_env`, which reads the process environment and the
//! password file; everything else takes its inputs as arguments and has unit tests.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Debian's libpq looks for the server's socket here when no host is given.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
const DEFAULT_PORT: u16 = 5432;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address: TLS applies.
    Tcp(String),
    /// The directory of a Unix socket (libpq: a host that starts with `/`). Never TLS,
    /// as in libpq: the kernel carries the bytes.
    Socket(PathBuf),
}

/// libpq's `sslmode`, with the meaning wxtoken gives each value on a TCP host (a Unix
/// socket never uses TLS, whatever the mode):
/// - `disable`: plaintext.
/// - `allow`, `prefer` (the default), `require`: TLS is required; the certificate is not
///   checked, unless a root certificate is configured (`sslrootcert`, or
///   `~/.postgresql/root.crt` exists), in which case it is checked as with `verify-ca`.
///   libpq's `allow` and `prefer` would fall back to plaintext when the server offers no
///   TLS; wxtoken never does that silently: such a server fails to connect, with a
///   message that names `sslmode=disable` as the explicit way to plaintext.
/// - `verify-ca`: TLS, and the chain must lead to the root certificate.
/// - `verify-full`: as `verify-ca`, and the certificate must name the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(format!(
                    "sslmode '{}' is not one of disable, allow, prefer, require, verify-ca, verify-full",
                    crate::policy::one_line(text, 20)
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The roots a server certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system` (libpq 16): the well-known public CAs.
    System,
}

/// A password that `Debug` never shows. Where it came from is kept for messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Password {
    value: String,
    pub source: &'static str,
}

impl Password {
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Password(*** from {})", self.source)
    }
}

/// Everything needed to connect. `Display` is the URL with the password left out, for
/// `status`, messages and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub password: Option<Password>,
    pub sslmode: SslMode,
    /// `sslrootcert` as given (URL or `PGSSLROOTCERT`); `None` means libpq's default file,
    /// `~/.postgresql/root.crt`, if it exists.
    pub sslrootcert: Option<RootCert>,
    /// The client certificate (PEM) as given (`sslcert` or `PGSSLCERT`); `None` means
    /// libpq's default, `~/.postgresql/postgresql.crt`, used only if it exists.
    pub sslcert: Option<PathBuf>,
    /// Its private key (PEM, unencrypted) as given (`sslkey` or `PGSSLKEY`); `None` means
    /// `~/.postgresql/postgresql.key`.
    pub sslkey: Option<PathBuf>,
    pub application_name: Option<String>,
    pub connect_timeout: Option<Duration>,
    /// The password file to consult when no password is given (`passfile`, `PGPASSFILE`,
    /// else `~/.pgpass`).
    pub passfile: Option<PathBuf>,
}

/// The process's view of the world that a connection URL is completed from: `PG*`
/// variables, the home directory and the login name. A struct so tests can fake it.
pub struct Env<'a> {
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub home: Option<PathBuf>,
    pub login: Option<String>,
}

impl PgConfig {
    /// Parses `url` and completes it from the process environment and the password file.
    pub fn from_env(url: &str) -> Result<PgConfig, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let env = Env {
            var: &var,
            home: std::env::var_os("HOME").map(PathBuf::from),
            login: login_name(),
        };
        let mut config = PgConfig::parse(url, &env)?;
        if config.password.is_none()
            && let Some(file) = &config.passfile
        {
            config.password = read_passfile(file, &config);
        }
        Ok(config)
    }

    /// Parses a libpq URL (`postgres://` or `postgresql://`), filling what it leaves out
    /// from `env` as libpq does: the URL wins over `PG*` variables, which win over the
    /// defaults. Errors never quote the URL, which may hold a password.
    pub fn parse(url: &str, env: &Env) -> Result<PgConfig, String> {
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .ok_or("a PostgreSQL URL starts with postgres:// or postgresql://")?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if rest.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err("the PostgreSQL URL has a '#' fragment; percent-encode '#' as %23".into());
        }
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        // The password may contain '@' only percent-encoded, so the last '@' splits.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };

        let mut p = Params::default();
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, pw)) => (u, Some(pw)),
                None => (userinfo, None),
            };
            p.user = nonempty(decode(user, "user name")?);
            p.password = match password {
                Some(pw) => nonempty(decode(pw, "password")?),
                None => None,
            };
        }
        if hostport.contains(',') {
            return Err(
                "the PostgreSQL URL names several hosts; wxtoken connects to one (name a single host)"
                    .into(),
            );
        }
        let (host, port) = split_host_port(hostport)?;
        p.host = nonempty(decode(host, "host")?);
        p.port = match port {
            Some(port) => Some(decode(port, "port")?),
            None => None,
        };
        if let Some(path) = path {
            p.dbname = nonempty(decode(path, "database name")?);
        }
        for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "URL parameter '{}' has no value (write name=value)",
                    crate::policy::one_line(pair.split(':').next().unwrap_or(""), 30)
                )
            })?;
            let key = decode(key, "parameter name")?;
            let value = decode(value, "parameter value")?;
            p.set(&key, value)?;
        }
        p.complete(env)
    }
}

impl fmt::Display for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgresql://{}@", encode(&self.user))?;
        match &self.host {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port)?,
            Host::Tcp(h) => write!(f, "{}:{}", encode(h), self.port)?,
            Host::Socket(_) => {}
        }
        write!(f, "/{}", encode(&self.dbname))?;
        match &self.host {
            Host::Socket(dir) => write!(
                f,
                "?host={}&port={}",
                encode(&dir.to_string_lossy()),
                self.port
            ),
            Host::Tcp(_) => write!(f, "?sslmode={}", self.sslmode.as_str()),
        }
    }
}

/// What the URL said, before defaults.
#[derive(Default)]
struct Params {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    application_name: Option<String>,
    connect_timeout: Option<String>,
    passfile: Option<String>,
}

impl Params {
    fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        let slot = match key {
            "host" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "application_name" => &mut self.application_name,
            "connect_timeout" => &mut self.connect_timeout,
            "passfile" => &mut self.passfile,
            _ => {
                return Err(format!(
                    "URL parameter '{}' is not supported by wxtoken (supported: host, port, user, \
                     password, dbname, sslmode, sslrootcert, sslcert, sslkey, application_name, \
                     connect_timeout, passfile)",
                    crate::policy::one_line(key, 30)
                ));
            }
        };
        *slot = nonempty(value);
        Ok(())
    }

    fn complete(self, env: &Env) -> Result<PgConfig, String> {
        let var = |name: &str| (env.var)(name);
        let host = self
            .host
            .or_else(|| var("PGHOST"))
            .unwrap_or_else(|| DEFAULT_SOCKET_DIR.to_string());
        let host = if host.starts_with('/') {
            Host::Socket(PathBuf::from(host))
        } else {
            Host::Tcp(host)
        };
        let port = match self.port.or_else(|| var("PGPORT")) {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(format!(
                        "port '{}' is not a number from 1 to 65535",
                        crate::policy::one_line(&p, 20)
                    ));
                }
            },
        };
        let user = self
            .user
            .or_else(|| var("PGUSER"))
            .or_else(|| env.login.clone())
            .ok_or("no PostgreSQL user name: put one in the URL (postgres://USER@HOST/DB) or in PGUSER")?;
        let dbname = self
            .dbname
            .or_else(|| var("PGDATABASE"))
            .unwrap_or_else(|| user.clone());
        let password = match (self.password, var("PGPASSWORD")) {
            (Some(value), _) => Some(Password {
                value,
                source: "the URL",
            }),
            (None, Some(value)) => Some(Password {
                value,
                source: "PGPASSWORD",
            }),
            (None, None) => None,
        };
        let sslmode = match self.sslmode.or_else(|| var("PGSSLMODE")) {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        let sslrootcert =
            self.sslrootcert
                .or_else(|| var("PGSSLROOTCERT"))
                .map(|r| match r.as_str() {
                    "system" => RootCert::System,
                    _ => RootCert::File(expand_home(&r, env.home.as_deref())),
                });
        let file = |given: Option<String>, var_name: &str| {
            given
                .or_else(|| var(var_name))
                .map(|f| expand_home(&f, env.home.as_deref()))
        };
        let sslcert = file(self.sslcert, "PGSSLCERT");
        let sslkey = file(self.sslkey, "PGSSLKEY");
        if sslmode == SslMode::Disable && sslrootcert.is_some() {
            log::debug!("sslrootcert is ignored with sslmode=disable");
        }
        let connect_timeout = match self.connect_timeout.or_else(|| var("PGCONNECT_TIMEOUT")) {
            None => None,
            // libpq: zero, negative or unparsable means wait forever; we ask for a number.
            Some(t) => match t.parse::<u64>() {
                Ok(0) => None,
                // libpq treats 1 as 2 seconds: one second is too short to mean anything.
                Ok(n) => Some(Duration::from_secs(n.max(2))),
                Err(_) => {
                    return Err(format!(
                        "connect_timeout '{}' is not a number of seconds",
                        crate::policy::one_line(&t, 20)
                    ));
                }
            },
        };
        let passfile = self
            .passfile
            .or_else(|| var("PGPASSFILE"))
            .map(|f| expand_home(&f, env.home.as_deref()))
            .or_else(|| env.home.as_ref().map(|h| h.join(".pgpass")));
        Ok(PgConfig {
            host,
            port,
            user,
            dbname,
            password,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
            application_name: self.application_name.or_else(|| var("PGAPPNAME")),
            connect_timeout,
            passfile,
        })
    }
}

fn nonempty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(path),
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or empty.
fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("the PostgreSQL URL has an IPv6 host without its closing ']'")?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err("unexpected text after the IPv6 host in the PostgreSQL URL".into()),
        };
    }
    Ok(match hostport.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    })
}

/// Percent-decoding. `what` names the part in errors, which never quote its value.
fn decode(text: &str, what: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("the {what} in the PostgreSQL URL has a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the {what} in the PostgreSQL URL is not UTF-8"))
}

/// Percent-encodes what a URL part cannot hold literally, for `Display`.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The password for `config` from a libpq password file, if the file exists, is private
/// (libpq ignores a file that group or others can read, and so do we, with a warning) and
/// has a matching line.
fn read_passfile(file: &Path, config: &PgConfig) -> Option<Password> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "password file {} has group or world access; ignoring it (chmod 0600 it)",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = match &config.host {
        Host::Tcp(h) => h.clone(),
        Host::Socket(dir) => dir.to_string_lossy().into_owned(),
    };
    passfile_lookup(&text, &host, config.port, &config.dbname, &config.user).map(|value| Password {
        value,
        source: "the password file",
    })
}

/// libpq's matching rules: `hostname:port:database:username:password`, the first line
/// that matches wins, `*` matches anything, `\` escapes `:` and `\`, `#` starts a comment.
/// A Unix socket in the default directory also matches `localhost`.
pub fn passfile_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    let hosts: &[&str] = if host == DEFAULT_SOCKET_DIR {
        &[host, "localhost"]
    } else {
        &[host]
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let fields = split_passfile_line(line);
        let [h, p, d, u, pw] = fields.as_slice() else {
            continue;
        };
        let matches = |field: &str, value: &str| field == "*" || field == value;
        if hosts.iter().any(|host| matches(h, host))
            && matches(p, &port)
            && matches(d, db)
            && matches(u, user)
        {
            return Some(pw.clone());
        }
    }
    None
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("never empty").push(next);
                }
            }
            // The password is the rest of the line, colons and all, after four fields.
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

/// The login name for libpq's default user: `USER`, `LOGNAME`, else the passwd entry of
/// our uid.
fn login_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    for name in ["USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(name)
            && !v.is_empty()
        {
            return Some(v);
        }
    }
    let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn parse_with(url: &str, vars: &[(&str, &str)]) -> Result<PgConfig, String> {
        let var = env_with(vars);
        PgConfig::parse(
            url,
            &Env {
                var: &var,
                home: Some(PathBuf::from("/home/op")),
                login: Some("op".into()),
            },
        )
    }

    fn parse(url: &str) -> PgConfig {
        parse_with(url, &[]).unwrap()
    }

    #[test]
    fn full_url() {
        let c = parse(
            "postgresql://wx%40app:p%3Ass@db.example.com:6432/tokens?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=wx&connect_timeout=5",
        );
        assert_eq!(c.host, Host::Tcp("db.example.com".into()));
        assert_eq!(c.port, 6432);
        assert_eq!(c.user, "wx@app");
        assert_eq!(c.password.as_ref().unwrap().expose(), "p:ss");
        assert_eq!(c.password.as_ref().unwrap().source, "the URL");
        assert_eq!(c.dbname, "tokens");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(c.application_name.as_deref(), Some("wx"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn defaults_follow_libpq() {
        let c = parse("postgres://");
        assert_eq!(c.host, Host::Socket(DEFAULT_SOCKET_DIR.into()));
        assert_eq!(c.port, 5432);
        assert_eq!(c.user, "op");
        assert_eq!(c.dbname, "op");
        assert_eq!(c.password, None);
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.passfile, Some(PathBuf::from("/home/op/.pgpass")));
        assert_eq!((c.sslcert, c.sslkey), (None, None));
    }

    #[test]
    fn environment_fills_gaps_but_the_url_wins() {
        let vars = [
            ("PGHOST", "envhost"),
            ("PGPORT", "7000"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "require"),
            ("PGSSLROOTCERT", "~/ca.pem"),
            ("PGAPPNAME", "envapp"),
            ("PGPASSFILE", "/etc/pgpass"),
            ("PGSSLCERT", "~/me.crt"),
            ("PGSSLKEY", "/etc/me.key"),
        ];
        let c = parse_with("postgres://", &vars).unwrap();
        assert_eq!(c.host, Host::Tcp("envhost".into()));
        assert_eq!(
            (c.port, c.user.as_str(), c.dbname.as_str()),
            (7000, "envuser", "envdb")
        );
        assert_eq!(c.password.as_ref().unwrap().source, "PGPASSWORD");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(
            c.sslrootcert,
            Some(RootCert::File("/home/op/ca.pem".into()))
        );
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
        assert_eq!(c.passfile, Some(PathBuf::from("/etc/pgpass")));
        assert_eq!(c.sslcert, Some(PathBuf::from("/home/op/me.crt")));
        assert_eq!(c.sslkey, Some(PathBuf::from("/etc/me.key")));

        let c = parse_with(
            "postgres://u:urlpw@h:1/d?sslmode=disable&sslcert=/c.pem&sslkey=~/k.pem",
            &vars,
        )
        .unwrap();
        assert_eq!(c.sslcert, Some(PathBuf::from("/c.pem")));
        assert_eq!(c.sslkey, Some(PathBuf::from("/home/op/k.pem")));
        assert_eq!(c.host, Host::Tcp("h".into()));
        assert_eq!((c.port, c.user.as_str(), c.dbname.as_str()), (1, "u", "d"));
        assert_eq!(c.password.as_ref().unwrap().expose(), "urlpw");
        assert_eq!(c.sslmode, SslMode::Disable);
    }

    #[test]
    fn unix_socket_hosts() {
        let c = parse("postgresql://%2Ftmp%2Fpg/db");
        assert_eq!((c.host, c.port), (Host::Socket("/tmp/pg".into()), 5432));
        let c = parse("postgresql:///db?host=/run/pg&port=5433");
        assert_eq!((c.host, c.port), (Host::Socket("/run/pg".into()), 5433));
    }

    #[test]
    fn ipv6_hosts() {
        let c = parse("postgres://u@[::1]:5433/d");
        assert_eq!(c.host, Host::Tcp("::1".into()));
        assert_eq!(c.port, 5433);
        assert_eq!(c.to_string(), "postgresql://u@[::1]:5433/d?sslmode=prefer");
    }

    #[test]
    fn bad_urls_are_refused_without_quoting_the_password() {
        for (url, words) in [
            ("postgres://u:s3cret@h:99999/d", "port"),
            ("postgres://u:s3cret@h/d?sslmode=maybe", "sslmode"),
            ("postgres://u:s3cret@h/d?sslcrl=/x", "not supported"),
            ("postgres://u:s3cret@h1,h2/d", "several hosts"),
            ("postgres://u:s3c%ZZret@h/d", "bad %-escape"),
            ("postgres://u:s3cret@h/d?sslmode", "no value"),
            ("postgres://u:s3cret@h/d#x", "fragment"),
            (
                "postgres://u:s3cret@h/d?connect_timeout=soon",
                "connect_timeout",
            ),
        ] {
            let err = parse_with(url, &[]).unwrap_err();
            assert!(err.contains(words), "{url}: {err}");
            assert!(!err.contains("s3cret"), "{url}: {err}");
        }
    }

    #[test]
    fn display_and_debug_never_show_the_password() {
        let c = parse("postgres://u:s3cret@h/d?password=other");
        let shown = format!("{c} {c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("other"),
            "{shown}"
        );
        assert_eq!(c.to_string(), "postgresql://u@h:5432/d?sslmode=prefer");
        let c = parse("postgres:///d?host=/run/pg");
        assert_eq!(
            c.to_string(),
            "postgresql://op@/d?host=%2Frun%2Fpg&port=5432"
        );
    }

    #[test]
    fn passfile_matching() {
        let text = "# comment\n\
                    other:5432:*:op:wrong\n\
                    db.example.com:5432:tokens:op:first\n\
                    db.example.com:*:*:op:second\n\
                    localhost:5432:*:*:sock\\:et\n\
                    *:*:*:*:any:colon\n";
        let lookup = |host, port, db, user| passfile_lookup(text, host, port, db, user);
        assert_eq!(
            lookup("db.example.com", 5432, "tokens", "op").as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup("db.example.com", 6432, "tokens", "op").as_deref(),
            Some("second")
        );
        assert_eq!(
            lookup(DEFAULT_SOCKET_DIR, 5432, "x", "y").as_deref(),
            Some("sock:et")
        );
        assert_eq!(
            lookup("/tmp/other", 5432, "x", "y").as_deref(),
            Some("any:colon")
        );
        assert_eq!(passfile_lookup("h:1:d:u\n", "h", 1, "d", "u"), None);
        assert_eq!(
            passfile_lookup("h\\:x:1:d:u:pw\n", "h:x", 1, "d", "u").as_deref(),
            Some("pw")
        );
    }
}
