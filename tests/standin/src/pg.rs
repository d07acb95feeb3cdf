//! A real PostgreSQL server for tests: `initdb` + `pg_ctl` in a short temp directory,
//! listening on a Unix socket there (and, for the TLS tests, on a loopback port), as the
//! unprivileged `postgres` user when the tests run as root (initdb refuses root). One
//! server per test binary, one database per test. No mocks, no downloads, no Docker.
//!
//! Without PostgreSQL installed, `server()` prints a visible note and returns `None`, so
//! the test skips; under `CI=true` it panics instead: CI never skips these.
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

static SHARED: OnceLock<Option<PgServer>> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// A running server. Dropping it stops it and removes its directory; the shared one,
/// which lives in a static and is never dropped, is stopped by a watcher process when the
/// test binary exits, however it exits.
pub struct PgServer {
    pub bindir: PathBuf,
    /// The temp directory: data, log and the socket. Short, because a socket path is
    /// limited to 107 bytes.
    pub dir: PathBuf,
    /// The loopback TCP port, when started with one.
    pub port: Option<u16>,
    run_as: Option<&'static str>,
}

/// How a server is started.
#[derive(Default, Clone)]
pub struct Options {
    /// Also listen on 127.0.0.1 at a free port.
    pub tcp: bool,
    /// Serve TLS on that port with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With `tls`: on that port, accept only clients that present a certificate signed by
    /// this CA (PEM) whose CN is the user (pg_hba `cert`).
    pub client_ca: Option<PathBuf>,
}

/// The shared server of this test binary, or `None` (after a note on stderr) when
/// PostgreSQL is not installed and this is not CI.
pub fn server() -> Option<&'static PgServer> {
    SHARED
        .get_or_init(|| {
            let server = PgServer::start(&Options::default())?;
            server.stop_when_process_exits();
            Some(server)
        })
        .as_ref()
}

/// The directory with `initdb`, `pg_ctl`, `postgres` and `psql`: the newest
/// /usr/lib/postgresql/N/bin (Debian keeps them off PATH), else `pg_config --bindir`.
pub fn find_bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    bin.join("initdb").is_file().then_some(bin)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl PgServer {
    /// Starts a server, or returns `None` with a note when PostgreSQL is missing (a panic
    /// under CI=true).
    pub fn start(options: &Options) -> Option<PgServer> {
        let Some(bindir) = find_bindir() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "PostgreSQL is not installed, and CI must not skip its tests (.ci/run installs it)"
                );
            }
            eprintln!(
                "NOTE: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
                 skipping this PostgreSQL test; `apt-get install postgresql` to run it"
            );
            return None;
        };
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/wxpg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server directory");
        let run_as = is_root().then_some("postgres");
        if run_as.is_some() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown {} failed", dir.display());
        }
        let server = PgServer {
            bindir,
            dir,
            port: options.tcp.then(free_port),
            run_as,
        };
        let data = server.dir.join("data");
        server.run_checked(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C.UTF-8".as_ref(),
            ],
        );
        let mut settings = format!(
            "-c listen_addresses='{}' -k {} -c fsync=off -c max_connections=200",
            if server.port.is_some() {
                "127.0.0.1"
            } else {
                ""
            },
            server.dir.display()
        );
        if let Some(port) = server.port {
            settings.push_str(&format!(" -p {port}"));
        }
        if let Some((cert, key)) = &options.tls {
            // The server insists that its key is private and its own.
            let client_ca = options.client_ca.iter().map(|ca| (ca, "client_ca.crt"));
            for (from, to) in [(cert, "server.crt"), (key, "server.key")]
                .into_iter()
                .chain(client_ca)
            {
                use std::os::unix::fs::PermissionsExt;
                let to = data.join(to);
                std::fs::copy(from, &to).expect("copy TLS files");
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod TLS files");
                if let Some(user) = run_as {
                    let owner = format!("{user}:{user}");
                    let ok = Command::new("chown").arg(owner).arg(&to).status();
                    assert!(ok.is_ok_and(|s| s.success()), "chown {}", to.display());
                }
            }
            settings.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
            if options.client_ca.is_some() {
                settings.push_str(" -c ssl_ca_file=client_ca.crt");
                // The first matching line wins: TCP needs a certificate, the socket trusts.
                let hba = data.join("pg_hba.conf");
                let rest = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
                std::fs::write(&hba, format!("hostssl all all 127.0.0.1/32 cert\n{rest}"))
                    .expect("write pg_hba.conf");
            }
        }
        let log = server.dir.join("log");
        server.run_checked(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-o".as_ref(),
                settings.as_ref(),
                "start".as_ref(),
            ],
        );
        Some(server)
    }

    /// `pg_ctl restart -m fast`: every session is ended at once, as in a server restart
    /// in production; returns once the server accepts connections again.
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast", "restart"]);
    }

    /// `pg_ctl stop -m fast`: the server is down until [`PgServer::restart`].
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let mut all: Vec<&std::ffi::OsStr> = vec![
            "-D".as_ref(),
            data.as_os_str(),
            // Without a log file the server would keep our output pipe open.
            "-l".as_ref(),
            log.as_os_str(),
            "-w".as_ref(),
        ];
        all.extend(args.iter().map(std::ffi::OsStr::new));
        self.run_checked("pg_ctl", &all);
    }

    /// Runs a server program (as `postgres` when we are root) and panics, with its
    /// output, if it fails.
    fn run_checked(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let path = self.bindir.join(program);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            panic!(
                "{program} failed: {}\n{}\n{}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Stops the server when this process ends: a detached watcher polls for our pid.
    pub fn stop_when_process_exits(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {stop}; rm -rf '{dir}'",
            pid = std::process::id(),
            stop = self.stop_command(),
            dir = self.dir.display()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn stop_command(&self) -> String {
        let ctl = format!(
            "'{}' -D '{}' -m immediate -w stop",
            self.bindir.join("pg_ctl").display(),
            self.dir.join("data").display()
        );
        match self.run_as {
            Some(user) => format!("runuser -u {user} -- {ctl}"),
            None => ctl,
        }
    }

    /// A URL for a database on the Unix socket, as user `postgres` (trust authentication).
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgresql:///{db}?host={}&user=postgres{}",
            self.dir.display(),
            self.port.map_or(String::new(), |p| format!("&port={p}"))
        )
    }

    /// The socket's port number (its file name has it): the TCP port when there is one.
    fn port_arg(&self) -> String {
        self.port.unwrap_or(5432).to_string()
    }

    /// A new, empty database for one test; returns its URL on the Unix socket.
    pub fn create_db(&self) -> PgDb<'_> {
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        PgDb {
            url: self.socket_url(&name),
            name,
            server: self,
        }
    }

    /// Runs SQL through psql as the superuser; returns stdout (unaligned, tuples only).
    #[track_caller]
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_as("postgres", db, sql);
        assert!(out.0, "psql failed on {sql}:\n{}", out.2);
        out.1
    }

    /// Runs SQL as `user`: (success, stdout, stderr).
    pub fn psql_as(&self, user: &str, db: &str, sql: &str) -> (bool, String, String) {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port_arg()])
            .args(["-U", user, "-d", db, "-c", sql])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args(["-c", &self.stop_command()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Test certificates made with the openssl command: a CA, and a server certificate for
/// `localhost` that it signed.
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Makes a CA named `ca_name` and a server certificate for `localhost` in `dir`.
pub fn make_certs(dir: &std::path::Path, ca_name: &str) -> Certs {
    openssl(
        dir,
        &format!(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
                 -keyout ca.key -out ca.pem -days 2 -subj /CN={ca_name}
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
                 -keyout server.key -out server.csr -subj /CN=localhost
             printf 'subjectAltName=DNS:localhost\\n' > ext
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
                 -out server.crt -days 2 -extfile ext"
        ),
    );
    Certs {
        dir: dir.to_path_buf(),
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    }
}

impl Certs {
    /// A client certificate for `cn` signed by this CA: (`CN.crt`, `CN.key`), the key
    /// mode 0600.
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        openssl(
            &self.dir,
            &format!(
                "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
                     -keyout {cn}.key -out {cn}.csr -subj /CN={cn}
                 printf 'extendedKeyUsage=clientAuth\\n' > {cn}.ext
                 openssl x509 -req -in {cn}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
                     -out {cn}.crt -days 2 -extfile {cn}.ext
                 chmod 600 {cn}.key"
            ),
        );
        (
            self.dir.join(format!("{cn}.crt")),
            self.dir.join(format!("{cn}.key")),
        )
    }
}

fn openssl(dir: &std::path::Path, script: &str) {
    std::fs::create_dir_all(dir).expect("create the certificate directory");
    let out = Command::new("sh")
        .args(["-c", &format!("set -e; {script}")])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "openssl could not make test certificates: {out:?}"
    );
}

/// One test's database.
pub struct PgDb<'s> {
    pub name: String,
    /// `postgresql:///NAME?host=DIR&user=postgres`
    pub url: String,
    pub server: &'s PgServer,
}

impl PgDb<'_> {
    #[track_caller]
    pub fn query(&self, sql: &str) -> String {
        self.server.psql(&self.name, sql)
    }

    #[track_caller]
    pub fn query_i64(&self, sql: &str) -> i64 {
        let out = self.query(sql);
        out.parse()
            .unwrap_or_else(|_| panic!("{sql}: not a number: {out:?}"))
    }
}

/// An open psql session on one test database. Statements run as they are sent, so a test
/// can hold a transaction, and its locks, open while wxtoken runs.
pub struct PgSession {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    sent: usize,
}

impl PgDb<'_> {
    /// A psql session on this database, as the superuser; it stops on the first error.
    pub fn session(&self) -> PgSession {
        self.session_as("postgres")
    }

    /// A psql session on this database as `user`; it stops on the first error.
    pub fn session_as(&self, user: &str) -> PgSession {
        let mut child = Command::new(self.server.bindir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.server.dir)
            .args(["-p", &self.server.port_arg()])
            .args(["-U", user, "-d", &self.name])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        PgSession {
            stdin: child.stdin.take(),
            stdout: std::io::BufReader::new(child.stdout.take().expect("psql stdout")),
            child,
            sent: 0,
        }
    }
}

impl PgSession {
    /// Runs `sql` and returns once psql has run it, with what it printed.
    #[track_caller]
    pub fn run(&mut self, sql: &str) -> String {
        use std::io::{BufRead, Read, Write};
        self.sent += 1;
        let marker = format!("psql-session-done-{}", self.sent);
        let stdin = self.stdin.as_mut().expect("session open");
        writeln!(stdin, "{sql}\nSELECT '{marker}';").expect("write to psql");
        stdin.flush().expect("flush psql's stdin");
        let mut printed = String::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).expect("read psql") == 0 {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                panic!("psql ended on {sql}:\n{printed}{stderr}");
            }
            if line.trim_end() == marker {
                return printed;
            }
            printed += &line;
        }
    }
}

impl Drop for PgSession {
    fn drop(&mut self) {
        // End of input: psql disconnects, and the server rolls back what is still open.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
