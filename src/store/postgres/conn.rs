//! Connecting to PostgreSQL: libpq's `sslmode` semantics on top of rustls (no OpenSSL),
//! since the Rust client knows only disable/prefer/require and its rustls connector always
//! behaves like `verify-full`. See `conf::SslMode` for what each mode means here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::postgres::conf::{Host, PgConfig, RootCert, SslMode};

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

/// The client certificate and key to present, as libpq picks them: `sslcert` and
/// `sslkey` (or `PGSSLCERT`, `PGSSLKEY`), else `~/.postgresql/postgresql.crt` and `.key`,
/// that certificate only if it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which client certificate `config` presents, if any; `home` is the home directory.
/// A certificate named in the URL or the environment must exist (libpq would connect
/// without it and leave the server to refuse, or not); the default one is optional.
pub fn client_cert(config: &PgConfig, home: Option<&Path>) -> Option<ClientCert> {
    let default = |name: &str| home.map(|h| h.join(".postgresql").join(name));
    let cert = config
        .sslcert
        .clone()
        .or_else(|| default("postgresql.crt").filter(|p| p.is_file()))?;
    let key = config
        .sslkey
        .clone()
        .or_else(|| default("postgresql.key"))
        .unwrap_or_else(|| PathBuf::from("~/.postgresql/postgresql.key"));
    Some(ClientCert { cert, key })
}

/// The certificate chain and key of `files`, checked as libpq checks them. Messages name
/// the files, never what the key holds.
fn load_client_cert(
    files: &ClientCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    use std::os::unix::fs::MetadataExt;
    let cert = files.cert.display();
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("could not read sslcert {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("sslcert {cert} holds no PEM certificate"));
    }
    let key = files.key.display();
    let meta = std::fs::metadata(&files.key).map_err(|e| {
        format!(
            "certificate {cert} present, but no private key file {key} ({e}): set sslkey \
             in the URL or PGSSLKEY"
        )
    })?;
    if crate::store::filesafety::key_too_open(
        meta.mode(),
        meta.uid(),
        crate::store::filesafety::euid(),
    ) {
        return Err(format!(
            "private key file {key} has group or world access; it must be u=rw (0600) or less \
             if owned by this user, or u=rw,g=r (0640) or less if owned by root"
        ));
    }
    let private = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(e) => format!("could not read sslkey {key}: {e}"),
        // The parser's other messages may quote a line of the file: never shown.
        _ => format!(
            "sslkey {key} holds no unencrypted PEM private key (wxtoken reads no encrypted \
             keys: decrypt it with `openssl pkey`)"
        ),
    })?;
    Ok((chain, private))
}

/// Connects, with every message naming the server without its password.
pub fn connect(config: &PgConfig) -> Result<Client, String> {
    let (tls, home) = tls_and_home(config)?;
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
            .connect(rustls_connector(&tls, config, home.as_deref())?),
    };
    result.map_err(|e| connect_error(&e, config, &tls))
}

/// The TLS policy for `config`, and the home directory whose `~/.postgresql` files (the
/// default root certificate, the client certificate) it reads, as libpq does.
fn tls_and_home(config: &PgConfig) -> Result<(Tls, Option<PathBuf>), String> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let default_root = home
        .as_ref()
        .map(|h| h.join(".postgresql/root.crt"))
        .filter(|p| p.is_file())
        .map(RootCert::File);
    Ok((tls_policy(config, default_root)?, home))
}

fn rustls_connector(
    tls: &Tls,
    config: &PgConfig,
    home: Option<&Path>,
) -> Result<MakeRustlsConnect, String> {
    Ok(MakeRustlsConnect::new(client_config(
        tls,
        client_cert(config, home).as_ref(),
    )?))
}

/// Asks the server to cancel the statement `token`'s session is running, over a connection
/// made as `connect` makes them (a cancel request carries no password, only the key the
/// server gave the session).
pub fn cancel(token: &postgres::CancelToken, config: &PgConfig) -> Result<(), String> {
    let (tls, home) = tls_and_home(config)?;
    let done = match tls {
        Tls::Off => token.cancel_query(postgres::NoTls),
        tls => token.cancel_query(rustls_connector(&tls, config, home.as_deref())?),
    };
    done.map_err(|e| format!("could not cancel a statement on {config}: {e}"))
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
    } else if text.contains("client certificate")
        || text.contains("certificate authentication failed")
    {
        " (the server wants a client certificate signed by a CA it trusts, for this user: \
         set sslcert and sslkey in the URL, or PGSSLCERT and PGSSLKEY)"
            .to_string()
    } else if *tls != Tls::Off && text.contains("certificate") {
        " (check sslrootcert and sslmode)".to_string()
    } else {
        String::new()
    };
    format!("could not connect to {config}: {text}{hint}")
}

fn client_config(tls: &Tls, identity: Option<&ClientCert>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let relaxed = |check| -> Arc<dyn ServerCertVerifier> {
        Arc::new(Relaxed {
            check,
            algorithms: provider.signature_verification_algorithms,
        })
    };
    let verifier: Arc<dyn ServerCertVerifier> = match tls {
        Tls::Off => unreachable!("plaintext needs no TLS configuration"),
        Tls::Unverified => relaxed(CertCheck::Nothing),
        Tls::Verified { roots, name } => {
            let roots = Arc::new(load_roots(roots)?);
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("TLS setup failed: {e}"))?;
            if *name {
                inner
            } else {
                relaxed(CertCheck::ChainOnly(inner))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(files) => {
            let (chain, key) = load_client_cert(files)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "sslcert {} with sslkey {}: {e}",
                    files.cert.display(),
                    files.key.display()
                )
            })
        }
    }
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

/// What a relaxed mode checks of the server's certificate.
#[derive(Debug)]
enum CertCheck {
    /// libpq's `require`: encrypted, but any certificate is accepted.
    Nothing,
    /// libpq's `verify-ca`: the chain must lead to a trusted root, the name may differ.
    ChainOnly(Arc<WebPkiServerVerifier>),
}

/// The verifier for the modes rustls has none for. Either way the handshake signature is
/// checked as rustls' own verifier checks it, so the peer holds the key of the
/// certificate it sent.
#[derive(Debug)]
struct Relaxed {
    check: CertCheck,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let CertCheck::ChainOnly(inner) = &self.check else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
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
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::conf::Env;
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
        use crate::store::postgres::pgtest::{Options, PgServer, find_bindir, make_certs};
        if find_bindir().is_none() || which("openssl").is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs postgresql and openssl"
            );
            eprintln!("NOTE: PostgreSQL or openssl missing: skipping the TLS test");
            return;
        }
        let dir = std::env::temp_dir().join(format!("wxtoken-tls-{}", std::process::id()));
        let certs = make_certs(&dir.join("good"), "wxtoken-test-ca");
        let other_ca = make_certs(&dir.join("other"), "someone-else").ca;
        let ca = certs.ca.clone();
        let server = PgServer::start(&Options {
            tcp: true,
            tls: Some((certs.server_cert, certs.server_key)),
            ..Options::default()
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
            ..Options::default()
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
