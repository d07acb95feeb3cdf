//! Connecting to PostgreSQL: libpq's `sslmode` semantics on top of rustls (no OpenSSL),
//! since the Rust client knows only disable/prefer/require and its rustls connector always
//! behaves like `verify-full`. See `pgconf::SslMode` for what each mode means here.

use std::sync::Arc;
use std::time::Duration;

use postgres::Client;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::pgconf::{Host, PgConfig, RootCert, SslMode};

/// Without these a dead network is noticed after the kernel's two hours and more: here
/// after 30 s of silence, then 3 probes 10 s apart, about a minute.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVES_RETRIES: u32 = 3;
/// Keepalives only probe an idle connection; a request sent into a dead network is
/// retransmitted for the kernel's 15 minutes and more unless this ends it sooner.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// When the URL gives no `connect_timeout`: a cron run must not hang on a dead host.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server's certificate is checked, decided from the mode and the roots available.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plaintext: `sslmode=disable`, or a Unix socket.
    Off,
    /// Encrypted, certificate not checked (libpq's `require` without a root file).
    Unverified,
    /// The chain must lead to these roots; `name` also checks the host name.
    Verified { roots: RootCert, name: bool },
}

/// The TLS policy for `config`. `default_root` is libpq's default root file
/// (`~/.postgresql/root.crt`) when it exists.
pub fn tls_policy(config: &PgConfig, default_root: Option<RootCert>) -> Result<Tls, String> {
    if matches!(config.host, Host::Socket(_)) || config.sslmode == SslMode::Disable {
        return Ok(Tls::Off);
    }
    let roots = config.sslrootcert.clone().or(default_root);
    Ok(match (config.sslmode, roots) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(format!(
                "sslmode={} needs root certificates: add sslrootcert=FILE (or sslrootcert=system) \
                 to the URL, or create ~/.postgresql/root.crt",
                config.sslmode.as_str()
            ));
        }
        (mode, Some(roots)) => Tls::Verified {
            roots,
            name: mode == SslMode::VerifyFull,
        },
        (_, None) => Tls::Unverified,
    })
}

/// Connects, with every message naming the server without its password.
pub fn connect(config: &PgConfig) -> Result<Client, String> {
    let default_root = std::env::var_os("HOME")
        .map(|h| std::path::PathBuf::from(h).join(".postgresql/root.crt"))
        .filter(|p| p.is_file())
        .map(RootCert::File);
    let tls = tls_policy(config, default_root)?;
    let mut pg = postgres::Config::new();
    pg.user(&config.user)
        .dbname(&config.dbname)
        .port(config.port)
        .keepalives_idle(KEEPALIVES_IDLE)
        .keepalives_interval(KEEPALIVES_INTERVAL)
        .keepalives_retries(KEEPALIVES_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .connect_timeout(config.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT));
    match &config.host {
        Host::Tcp(h) => pg.host(h),
        Host::Socket(dir) => pg.host_path(dir),
    };
    if let Some(pw) = &config.password {
        pg.password(pw.expose());
    }
    if let Some(name) = &config.application_name {
        pg.application_name(name);
    }
    let result = match &tls {
        Tls::Off => pg
            .ssl_mode(postgres::config::SslMode::Disable)
            .connect(postgres::NoTls),
        _ => pg
            .ssl_mode(postgres::config::SslMode::Require)
            .connect(MakeRustlsConnect::new(client_config(&tls)?)),
    };
    result.map_err(|e| connect_error(&e, config, &tls))
}

/// One line that says what to do. The client's own text never holds the password.
fn connect_error(err: &postgres::Error, config: &PgConfig, tls: &Tls) -> String {
    let mut text = format!("{err}");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    let hint = if text.contains("server does not support TLS") {
        format!(
            " (wxtoken never falls back to plaintext on a TCP host with sslmode={}; \
             add sslmode=disable to the URL if plaintext is intended)",
            config.sslmode.as_str()
        )
    } else if text.contains("password authentication failed") || text.contains("no password") {
        match &config.password {
            Some(pw) => format!(" (password from {})", pw.source),
            None => " (no password given: set PGPASSWORD, a ~/.pgpass line, or put it in WXTOKEN_DB, never in argv)".to_string(),
        }
    } else if *tls != Tls::Off && text.contains("certificate") {
        " (check sslrootcert and sslmode)".to_string()
    } else {
        String::new()
    };
    format!("could not connect to {config}: {text}{hint}")
}

fn client_config(tls: &Tls) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls {
        Tls::Off => unreachable!("plaintext needs no TLS configuration"),
        Tls::Unverified => Arc::new(NoCheck(provider)),
        Tls::Verified { roots, name } => {
            let roots = Arc::new(load_roots(roots)?);
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS setup failed: {e}"))?;
            if *name {
                inner
            } else {
                Arc::new(ChainOnly(inner))
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn load_roots(roots: &RootCert) -> Result<RootCertStore, String> {
    match roots {
        RootCert::System => Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }),
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("could not read sslrootcert {}: {e}", path.display()))?;
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {} holds no usable certificate",
                    path.display()
                ));
            }
            Ok(store)
        }
    }
}

/// libpq's `require`: encrypted, but any certificate is accepted. The handshake signature
/// is still checked, so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// libpq's `verify-ca`: the chain must lead to a trusted root, the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgconf::Env;
    use std::path::PathBuf;

    fn config(url: &str) -> PgConfig {
        let var = |_: &str| None;
        PgConfig::parse(
            url,
            &Env {
                var: &var,
                home: None,
                login: Some("op".into()),
            },
        )
        .unwrap()
    }

    fn policy(url: &str, default_root: Option<&str>) -> Result<Tls, String> {
        tls_policy(&config(url), default_root.map(|p| RootCert::File(p.into())))
    }

    #[test]
    fn a_tcp_host_is_encrypted_unless_disabled() {
        for mode in ["", "?sslmode=allow", "?sslmode=prefer", "?sslmode=require"] {
            assert_eq!(
                policy(&format!("postgres://h/d{mode}"), None),
                Ok(Tls::Unverified)
            );
        }
        assert_eq!(policy("postgres://h/d?sslmode=disable", None), Ok(Tls::Off));
    }

    #[test]
    fn a_unix_socket_never_uses_tls() {
        assert_eq!(
            policy("postgres:///d?host=/run/pg&sslmode=verify-full", None),
            Ok(Tls::Off)
        );
    }

    #[test]
    fn verification_follows_libpq() {
        let file = |p: &str| RootCert::File(PathBuf::from(p));
        assert_eq!(
            policy(
                "postgres://h/d?sslmode=verify-full&sslrootcert=/ca.pem",
                None
            ),
            Ok(Tls::Verified {
                roots: file("/ca.pem"),
                name: true
            })
        );
        assert_eq!(
            policy("postgres://h/d?sslmode=verify-ca&sslrootcert=system", None),
            Ok(Tls::Verified {
                roots: RootCert::System,
                name: false
            })
        );
        // libpq: with a root file present, require checks the chain as verify-ca does.
        assert_eq!(
            policy(
                "postgres://h/d?sslmode=require",
                Some("/home/op/.postgresql/root.crt")
            ),
            Ok(Tls::Verified {
                roots: file("/home/op/.postgresql/root.crt"),
                name: false
            })
        );
        let err = policy("postgres://h/d?sslmode=verify-full", None).unwrap_err();
        assert!(err.contains("sslrootcert"), "{err}");
    }

    /// A CA and a server certificate for `localhost` signed by it, made with the openssl
    /// command; (ca.pem, server.crt, server.key) in `dir`.
    fn make_certs(dir: &std::path::Path, ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let script = format!(
            "set -e; cd '{}'
             openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
                 -keyout ca.key -out ca.pem -days 2 -subj /CN={ca_name} 2>/dev/null
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
                 -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
             printf 'subjectAltName=DNS:localhost\\n' > ext
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
                 -out server.crt -days 2 -extfile ext 2>/dev/null",
            dir.display()
        );
        let ok = std::process::Command::new("sh")
            .args(["-c", &script])
            .status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "openssl could not make test certificates"
        );
        (
            dir.join("ca.pem"),
            dir.join("server.crt"),
            dir.join("server.key"),
        )
    }

    fn encrypted(url: &str) -> Result<bool, String> {
        let var = |_: &str| None;
        let env = Env {
            var: &var,
            home: None,
            login: Some("postgres".into()),
        };
        let mut client = connect(&PgConfig::parse(url, &env)?)?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }

    #[test]
    fn sslmodes_against_a_real_tls_server() {
        use crate::store_pg::pgtest::{Options, PgServer, find_bindir};
        if find_bindir().is_none() || which("openssl").is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs postgresql and openssl"
            );
            eprintln!("NOTE: PostgreSQL or openssl missing: skipping the TLS test");
            return;
        }
        let dir = std::env::temp_dir().join(format!("wxtoken-tls-{}", std::process::id()));
        let (ca, cert, key) = make_certs(&dir.join("good"), "wxtoken-test-ca");
        let (other_ca, _, _) = make_certs(&dir.join("other"), "someone-else");
        let server = PgServer::start(&Options {
            tcp: true,
            tls: Some((cert, key)),
        })
        .unwrap();
        let port = server.port.unwrap();
        let url = |host: &str, params: &str| {
            format!("postgres://postgres@{host}:{port}/postgres?{params}")
        };
        let ca = ca.display();
        assert_eq!(
            encrypted(&url("127.0.0.1", "")),
            Ok(true),
            "default is prefer = TLS"
        );
        assert_eq!(encrypted(&url("127.0.0.1", "sslmode=require")), Ok(true));
        assert_eq!(encrypted(&url("127.0.0.1", "sslmode=disable")), Ok(false));
        assert_eq!(
            encrypted(&url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}")
            )),
            Ok(true)
        );
        // The certificate names localhost, not 127.0.0.1: only verify-ca accepts that.
        assert_eq!(
            encrypted(&url(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={ca}")
            )),
            Ok(true)
        );
        let err = encrypted(&url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ))
        .unwrap_err();
        assert!(err.contains("certificate"), "{err}");
        let other = other_ca.display();
        for mode in ["verify-ca", "verify-full", "require"] {
            let err = encrypted(&url(
                "localhost",
                &format!("sslmode={mode}&sslrootcert={other}"),
            ))
            .unwrap_err();
            assert!(err.contains("certificate"), "{mode}: {err}");
        }
        drop(server);

        // A server without TLS: no silent plaintext on TCP, unless asked for.
        let plain = PgServer::start(&Options {
            tcp: true,
            tls: None,
        })
        .unwrap();
        let port = plain.port.unwrap();
        let url =
            |params: &str| format!("postgres://postgres:pw@127.0.0.1:{port}/postgres?{params}");
        for mode in ["", "sslmode=allow", "sslmode=prefer", "sslmode=require"] {
            let err = encrypted(&url(mode)).unwrap_err();
            assert!(
                err.contains("never falls back to plaintext"),
                "{mode}: {err}"
            );
            assert!(
                err.contains("sslmode=disable") && !err.contains("pw@"),
                "{err}"
            );
        }
        assert_eq!(encrypted(&url("sslmode=disable")), Ok(false));
        drop(plain);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn which(program: &str) -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
    }
}
