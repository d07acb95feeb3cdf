//! A real `redis-server` (Debian's package) for the sink tests: one per test, on a free
//! loopback port with its files in the test's temp directory, stopped when dropped.
//! Without the binary the tests are skipped with a note, except under CI, where that fails.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    /// TLS only: the CA that signed the server's certificate (for localhost and 127.0.0.1).
    pub ca: Option<PathBuf>,
}

/// The server binary, if installed.
pub fn server_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// Whether a missing tool must fail the test rather than skip it (CI never skips).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Skips (returns true after printing a note) when `what` is missing outside CI; panics in CI.
pub fn skip_without(what: &str, present: bool) -> bool {
    if present {
        return false;
    }
    assert!(
        !in_ci(),
        "{what} is missing, and CI never skips: .ci/run installs it"
    );
    eprintln!("NOTE: skipping this test: {what} is not installed (bash .ci/run installs it)");
    true
}

impl Redis {
    /// Starts a server with `extra` arguments (like `--requirepass x`); `None` when the test
    /// should be skipped.
    pub fn start(dir: &Path, extra: &[&str]) -> Option<Redis> {
        Redis::start_with(dir, extra, None)
    }

    fn start_with(dir: &Path, extra: &[&str], ca: Option<PathBuf>) -> Option<Redis> {
        if skip_without("redis-server", server_binary().is_some()) {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Redis {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            ca,
        };
        redis.spawn();
        Some(redis)
    }

    /// A server that speaks TLS only, with a certificate from a CA made for this test
    /// (`openssl`); `None` when the test should be skipped.
    pub fn start_tls(dir: &Path) -> Option<Redis> {
        let have_openssl = Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if skip_without("openssl", have_openssl) {
            return None;
        }
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).expect("certs dir");
        let sh = format!(
            "set -e; cd '{}'
             openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=wxtoken-test-ca \
                 -keyout ca.key -out ca.crt 2>/dev/null
             openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key \
                 -out server.csr 2>/dev/null
             printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf
             openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                 -extfile ext.cnf -out server.crt 2>/dev/null",
            certs.display()
        );
        let ok = Command::new("sh")
            .arg("-c")
            .arg(&sh)
            .status()
            .expect("run openssl");
        assert!(ok.success(), "openssl could not make the test certificates");
        let c = |f: &str| certs.join(f).display().to_string();
        Redis::start_with(
            dir,
            &[
                "--tls-port-from-port",
                "--tls-cert-file",
                &c("server.crt"),
                "--tls-key-file",
                &c("server.key"),
                "--tls-ca-cert-file",
                &c("ca.crt"),
                "--tls-auth-clients",
                "no",
            ],
            Some(certs.join("ca.crt")),
        )
    }

    fn spawn(&mut self) {
        let tls = self
            .extra
            .first()
            .is_some_and(|a| a == "--tls-port-from-port");
        let (port_flag, extra) = match tls {
            true => ("--tls-port", &self.extra[1..]),
            false => ("--port", &self.extra[..]),
        };
        let mut cmd = Command::new(server_binary().expect("redis-server"));
        if tls {
            cmd.args(["--port", "0"]);
        }
        let child = cmd
            .args([port_flag, &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        // Ready when it answers PING (with the password, if there is one).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A client for the test's own checks: over TLS it trusts the test's CA.
    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                format!("rediss://localhost:{}/0", self.port),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).expect("read the test CA")),
                },
            ),
            None => redis::Client::open(self.admin_url()),
        }
    }

    fn ping(&self) -> bool {
        let Ok(client) = self.client() else {
            return false;
        };
        client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// A URL without credentials, database `db`.
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// The URL the test itself uses: with the server's password, if it has one.
    fn admin_url(&self) -> String {
        match self.extra.iter().position(|a| a == "--requirepass") {
            Some(i) => format!("redis://:{}@127.0.0.1:{}/0", self.extra[i + 1], self.port),
            None => self.url(0),
        }
    }

    /// A connection for checks, on database `db`.
    pub fn conn(&self, db: u8) -> redis::Connection {
        let mut c = self
            .client()
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis");
        redis::cmd("SELECT")
            .arg(db)
            .query::<()>(&mut c)
            .expect("SELECT");
        c
    }

    /// Every key of database `db`, sorted.
    pub fn keys(&self, db: u8) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut self.conn(db))
            .expect("KEYS");
        keys.sort();
        keys
    }

    pub fn get(&self, db: u8, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.conn(db))
            .expect("GET")
    }

    pub fn ttl(&self, db: u8, key: &str) -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query(&mut self.conn(db))
            .expect("TTL")
    }

    /// Stops the server (it keeps nothing: no RDB, no AOF).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it and starts it again, empty, on the same port.
    pub fn restart_empty(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
