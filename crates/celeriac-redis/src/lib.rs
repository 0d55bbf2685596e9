//! Redis plumbing shared by celeriac's Redis broker and Redis result backend.
//!
//! # Layout
//!
//! - [`RedisTarget`]: a parsed Redis URL as Celery/kombu accept them —
//!   `redis://[user:pass@]host[:port][/db]`, `rediss://` (TLS, see [`TlsOptions`]),
//!   and kombu's `redis+socket:///path/to/socket?virtual_host=N` (also `unix://`),
//!   plus the `global_keyprefix` query parameter — and the `redis::Client` for it.
//!
//! # TLS
//!
//! `rediss://` connects with rustls (the `ring` provider; the system's root
//! certificates unless `ssl_ca_certs` names others). kombu's URL query options are
//! understood: `ssl_cert_reqs=required|optional|none` (also `CERT_REQUIRED`,
//! `CERT_OPTIONAL`, `CERT_NONE`; default required; `optional` verifies like
//! `required`, as Python's client sockets do), `ssl_ca_certs=/path/ca.pem`,
//! `ssl_certfile=/path/client.pem` and `ssl_keyfile=/path/client.key` (the key may sit
//! in the certificate file). The server's host name is checked against its
//! certificate unless `ssl_cert_reqs=none`, which verifies nothing. The files are
//! read each time a connection is opened, so renewed certificates are picked up.
//! - [`keys`]: every key name of the Redis broker (kombu's and celeriac's), with the
//!   key prefix.
//! - [`connection`]: the shared command connection and dedicated connections for
//!   blocking commands.
//!
//! Connections: a blocking command (`BRPOP`) holds a whole multiplexed connection, so
//! blocking consumers must open their own with [`RedisTarget::client`] rather than
//! share the multiplexed one; pub/sub needs its own connection too and must
//! resubscribe after a reconnect.

pub mod connection;
pub mod keys;

/// Errors of parsing and connecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The URL cannot be used.
    #[error("invalid Redis URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, password hidden.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The client refused the URL or the connection failed.
    #[error("redis: {0}")]
    Client(#[from] redis::RedisError),
}

/// How a `rediss://` connection checks the server (kombu's `ssl_cert_reqs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertReqs {
    /// Verify the server's certificate and host name (`required`, `optional`).
    #[default]
    Required,
    /// Verify nothing (`none`): encrypted, but open to a man in the middle.
    None,
}

/// The TLS settings of a `rediss://` URL (kombu's `ssl_*` query options).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// `ssl_cert_reqs`.
    pub cert_reqs: CertReqs,
    /// `ssl_ca_certs`: PEM file of the CAs to trust instead of the system's.
    pub ca_certs: Option<std::path::PathBuf>,
    /// `ssl_certfile`: PEM client certificate chain (mutual TLS).
    pub certfile: Option<std::path::PathBuf>,
    /// `ssl_keyfile`: PEM private key of the client certificate (default: read from
    /// `ssl_certfile`).
    pub keyfile: Option<std::path::PathBuf>,
}

/// A parsed Redis URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// The URL handed to the `redis` crate (normalized, without kombu-only parameters).
    pub client_url: String,
    /// The database number (kombu's "virtual host").
    pub db: i64,
    /// kombu's `global_keyprefix`, prepended verbatim to every key and channel.
    pub global_keyprefix: String,
    /// The URL for logs, password hidden.
    pub display: String,
    /// TLS settings (`rediss://` URLs only).
    pub tls: Option<TlsOptions>,
}

impl RedisTarget {
    /// Parses `redis://`, `rediss://`, `redis+socket://` and `unix://` URLs.
    /// `?global_keyprefix=P` sets the key prefix; `?virtual_host=N` (socket URLs) or
    /// the path (`/N`, TCP URLs) selects the database; `ssl_*` options configure TLS
    /// (`rediss://` only, see the crate docs).
    pub fn parse(url: &str) -> Result<RedisTarget, RedisError> {
        let display = redact(url);
        let invalid = |reason: &str| RedisError::InvalidUrl {
            url: display.clone(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected redis://host[:port][/db]"))?;
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, q),
            None => (rest, ""),
        };
        let mut prefix = String::new();
        let mut virtual_host: Option<i64> = None;
        let mut kept = Vec::new();
        let mut tls = TlsOptions::default();
        let mut tls_options = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "ssl_cert_reqs" => {
                    tls.cert_reqs = match percent_decode(value).to_ascii_lowercase().as_str() {
                        "required" | "cert_required" | "optional" | "cert_optional" => {
                            CertReqs::Required
                        }
                        "none" | "cert_none" => CertReqs::None,
                        _ => {
                            return Err(invalid(
                                "ssl_cert_reqs must be required, optional or none (or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)",
                            ))
                        }
                    };
                    tls_options.push(key);
                }
                "ssl_ca_certs" | "ssl_certfile" | "ssl_keyfile" => {
                    let path = std::path::PathBuf::from(percent_decode(value));
                    if path.as_os_str().is_empty() {
                        return Err(invalid(&format!("{key} needs a file path")));
                    }
                    match key {
                        "ssl_ca_certs" => tls.ca_certs = Some(path),
                        "ssl_certfile" => tls.certfile = Some(path),
                        _ => tls.keyfile = Some(path),
                    }
                    tls_options.push(key);
                }
                "ssl_check_hostname" => tls_options.push(key),
                "global_keyprefix" => prefix = percent_decode(value),
                "virtual_host" => {
                    virtual_host = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("virtual_host must be a database number"))?,
                    )
                }
                _ => kept.push(pair.to_string()),
            }
        }
        let (client_url, db) = match scheme {
            "redis" | "rediss" => {
                let (authority, path) = match before_query.split_once('/') {
                    Some((a, p)) => (a, p),
                    None => (before_query, ""),
                };
                if authority.rsplit('@').next().unwrap_or("").is_empty() {
                    return Err(invalid("missing host"));
                }
                let db = match (path.trim_matches('/'), virtual_host) {
                    ("", Some(db)) => db,
                    ("", None) => 0,
                    (number, _) => number
                        .parse()
                        .map_err(|_| invalid("the path must be a database number, e.g. /0"))?,
                };
                let mut client = format!("{scheme}://{authority}/{db}");
                if !kept.is_empty() {
                    client.push('?');
                    client.push_str(&kept.join("&"));
                }
                if scheme == "rediss" && tls.cert_reqs == CertReqs::None {
                    // The redis crate's spelling of "verify nothing".
                    client.push_str("#insecure");
                }
                (client, db)
            }
            "redis+socket" | "unix" | "redis+unix" => {
                let path = before_query;
                if !path.starts_with('/') {
                    return Err(invalid(
                        "socket URLs need an absolute path: redis+socket:///path/to/redis.sock",
                    ));
                }
                let db = virtual_host.unwrap_or(0);
                let mut client = format!("unix://{path}?db={db}");
                for pair in &kept {
                    client.push('&');
                    client.push_str(pair);
                }
                (client, db)
            }
            other => return Err(invalid(&format!("unsupported scheme {other:?}"))),
        };
        if db < 0 {
            return Err(invalid("the database number must not be negative"));
        }
        if scheme != "rediss" {
            if let Some(option) = tls_options.first() {
                return Err(invalid(&format!(
                    "{option} needs a TLS URL (rediss://); {scheme}:// connections are not encrypted"
                )));
            }
        }
        if tls.keyfile.is_some() && tls.certfile.is_none() {
            return Err(invalid("ssl_keyfile needs ssl_certfile"));
        }
        Ok(RedisTarget {
            client_url,
            db,
            global_keyprefix: prefix,
            display,
            tls: (scheme == "rediss").then_some(tls),
        })
    }

    /// A client for this target (connections are opened lazily by the caller). For
    /// `rediss://` it reads the certificate files named in the URL.
    pub fn client(&self) -> Result<redis::Client, RedisError> {
        let Some(tls) = &self.tls else {
            return Ok(redis::Client::open(self.client_url.as_str())?);
        };
        install_crypto_provider();
        if tls.ca_certs.is_none() && tls.certfile.is_none() {
            return Ok(redis::Client::open(self.client_url.as_str())?);
        }
        let read = |option: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|error| RedisError::InvalidUrl {
                url: self.display.clone(),
                reason: format!("cannot read {option} {}: {error}", path.display()),
            })
        };
        let root_cert = tls
            .ca_certs
            .as_deref()
            .map(|path| read("ssl_ca_certs", path))
            .transpose()?;
        let client_tls = match &tls.certfile {
            Some(certfile) => Some(redis::ClientTlsConfig {
                client_cert: read("ssl_certfile", certfile)?,
                client_key: match &tls.keyfile {
                    Some(keyfile) => read("ssl_keyfile", keyfile)?,
                    None => read("ssl_certfile", certfile)?,
                },
            }),
            None => None,
        };
        Ok(redis::Client::build_with_tls(
            self.client_url.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )?)
    }

    /// `key` with the global key prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{}", self.global_keyprefix, key)
    }
}

/// Makes rustls use the `ring` provider in this process unless one is installed.
fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Err: another provider was installed first, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Hides the password of a URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let auth = &url[start + 3..at];
            match auth.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..start + 3], user, &url[at..]),
                None => format!("{}***{}", &url[..start + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_urls_celery_users_write() {
        let t = RedisTarget::parse("redis://127.0.0.1:6379/1").expect("tcp");
        assert_eq!(
            (t.client_url.as_str(), t.db),
            ("redis://127.0.0.1:6379/1", 1)
        );
        let t = RedisTarget::parse("redis://localhost").expect("no db");
        assert_eq!(t.db, 0);
        let t = RedisTarget::parse("redis://:secret@h:6380/2?global_keyprefix=app1_")
            .expect("password");
        assert_eq!((t.db, t.global_keyprefix.as_str()), (2, "app1_"));
        assert_eq!(t.display, "redis://:***@h:6380/2?global_keyprefix=app1_");
        assert_eq!(t.key("unacked"), "app1_unacked");
        let t =
            RedisTarget::parse("redis+socket:///run/redis.sock?virtual_host=3").expect("socket");
        assert_eq!(
            (t.client_url.as_str(), t.db),
            ("unix:///run/redis.sock?db=3", 3)
        );
        let t = RedisTarget::parse("rediss://u:p@h:6390/0").expect("tls");
        assert!(t.client_url.starts_with("rediss://"));
        assert_eq!(t.tls, Some(TlsOptions::default()));
        assert_eq!(RedisTarget::parse("redis://h/0").expect("plain").tls, None);
        assert!(RedisTarget::parse("redis://h/notadb").is_err());
        assert!(RedisTarget::parse("redis+socket://relative.sock").is_err());
        assert!(RedisTarget::parse("memcached://h").is_err());
        assert!(
            RedisTarget::parse("redis://h/0?global_keyprefix=a%2Fb")
                .map(|t| t.global_keyprefix)
                .ok()
                == Some("a/b".into())
        );
    }

    #[test]
    fn kombus_ssl_options_configure_tls() {
        let t = RedisTarget::parse(
            "rediss://:pw@h:6390/2?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=%2Fetc%2Fca.pem\
             &ssl_certfile=/c.pem&ssl_keyfile=/c.key&global_keyprefix=p",
        )
        .expect("all options");
        assert_eq!(t.client_url, "rediss://:pw@h:6390/2");
        assert_eq!((t.db, t.global_keyprefix.as_str()), (2, "p"));
        let tls = t.tls.expect("TLS options");
        assert_eq!(tls.cert_reqs, CertReqs::Required);
        assert_eq!(
            tls.ca_certs.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(
            tls.certfile.as_deref(),
            Some(std::path::Path::new("/c.pem"))
        );
        assert_eq!(tls.keyfile.as_deref(), Some(std::path::Path::new("/c.key")));
        for (value, expected) in [
            ("required", CertReqs::Required),
            ("optional", CertReqs::Required),
            ("CERT_OPTIONAL", CertReqs::Required),
            ("none", CertReqs::None),
            ("CERT_NONE", CertReqs::None),
        ] {
            let t = RedisTarget::parse(&format!("rediss://h/0?ssl_cert_reqs={value}"))
                .expect("ssl_cert_reqs");
            assert_eq!(t.tls.map(|t| t.cert_reqs), Some(expected), "{value}");
            assert_eq!(
                t.client_url.ends_with("#insecure"),
                expected == CertReqs::None,
                "{value}: {}",
                t.client_url
            );
        }
        for bad in [
            "rediss://h/0?ssl_cert_reqs=maybe",
            "rediss://h/0?ssl_ca_certs=",
            "rediss://h/0?ssl_keyfile=/k.pem",
            "redis://h/0?ssl_cert_reqs=required",
            "redis+socket:///r.sock?ssl_ca_certs=/ca.pem",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unreadable_certificate_files_are_named() {
        let t = RedisTarget::parse(
            "rediss://:secret@127.0.0.1:1/0?ssl_ca_certs=/nonexistent/celeriac-ca.pem",
        )
        .expect("parse");
        match t.client() {
            Err(RedisError::InvalidUrl { url, reason }) => {
                assert!(reason.contains("/nonexistent/celeriac-ca.pem"), "{reason}");
                assert!(!url.contains("secret"), "{url}");
            }
            other => panic!("expected a named file error, got {other:?}"),
        }
        assert!(RedisTarget::parse("rediss://127.0.0.1:1/0")
            .expect("parse")
            .client()
            .is_ok());
    }
}

/// For tests that need a Redis server.
pub mod testing {
    /// The Redis URL for service tests (`CELERIAC_TEST_REDIS_URL`, default
    /// `redis://127.0.0.1:6379`) if a server answers there. Otherwise: panics when
    /// `CELERIAC_REQUIRE_SERVICES=1` (CI), or prints why the test is skipped and returns
    /// `None` (a developer machine without Redis).
    pub fn redis_url_or_skip(test: &str) -> Option<String> {
        let url = std::env::var("CELERIAC_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let address = super::RedisTarget::parse(&url).ok().and_then(|t| {
            let rest = t.client_url.strip_prefix("redis://")?;
            let authority = rest.split('/').next()?.rsplit('@').next()?.to_string();
            Some(if authority.contains(':') {
                authority
            } else {
                format!("{authority}:6379")
            })
        });
        let answers = address.as_deref().is_some_and(|a| {
            a.parse::<std::net::SocketAddr>()
                .ok()
                .or_else(|| std::net::ToSocketAddrs::to_socket_addrs(a).ok()?.next())
                .is_some_and(|sa| {
                    std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_secs(1))
                        .is_ok()
                })
        });
        if answers {
            return Some(url);
        }
        let required = std::env::var("CELERIAC_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{test}: Redis does not answer at {url} and CELERIAC_REQUIRE_SERVICES=1"
        );
        eprintln!("skipped {test}: Redis does not answer at {url} (set CELERIAC_TEST_REDIS_URL)");
        None
    }

    /// Deletes the keys under the `global_keyprefix` of the Redis URL `url`, which a
    /// test harness gave a prefix of its own; nothing when the URL has no prefix or
    /// Redis does not answer within 2 s (a harness's cleanup on drop must not fail).
    pub fn delete_prefixed_keys(url: &str) {
        let Ok(target) = super::RedisTarget::parse(url) else {
            return;
        };
        if target.global_keyprefix.is_empty() {
            return;
        }
        let Ok(client) = target.client() else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(std::time::Duration::from_secs(2))
        else {
            return;
        };
        let pattern = format!("{}*", super::keys::glob_escape(&target.global_keyprefix));
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }

    /// Whether a test must fail (not skip) when a service is missing
    /// (`CELERIAC_REQUIRE_SERVICES=1`).
    pub fn services_required() -> bool {
        std::env::var("CELERIAC_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
    }

    /// Skips a test: panics when services are required, else prints the reason.
    pub fn skip(test: &str, reason: &str) {
        assert!(
            !services_required(),
            "{test}: {reason}, and CELERIAC_REQUIRE_SERVICES=1"
        );
        eprintln!("skipped {test}: {reason}");
    }

    /// A `redis-server` process a test owns: its own free port on 127.0.0.1, its own
    /// temporary directory, no persistence. It never touches the shared server.
    /// Killed (and its directory removed) when dropped.
    #[derive(Debug)]
    pub struct PrivateRedis {
        /// The port it listens on (the TLS port when started with TLS arguments
        /// that set `--port 0`).
        pub port: u16,
        dir: std::path::PathBuf,
        args: Vec<String>,
        child: Option<std::process::Child>,
    }

    impl PrivateRedis {
        /// Starts `redis-server --port <free>` (plain TCP), or returns `None` after
        /// [`skip`] when `redis-server` is not on PATH.
        pub fn start_or_skip(test: &str) -> Option<PrivateRedis> {
            let port = free_port();
            PrivateRedis::start_with_or_skip(test, port, vec!["--port".into(), port.to_string()])
        }

        /// Starts `redis-server` with `args` (which must make it listen on `port`),
        /// or returns `None` after [`skip`] when `redis-server` is missing or does
        /// not come up (e.g. built without TLS for `--tls-port`).
        pub fn start_with_or_skip(
            test: &str,
            port: u16,
            args: Vec<String>,
        ) -> Option<PrivateRedis> {
            let found = std::process::Command::new("redis-server")
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                skip(test, "redis-server is not on PATH");
                return None;
            }
            let dir = std::env::temp_dir().join(format!(
                "celeriac-redis-{}-{}-{port}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            if let Err(error) = std::fs::create_dir_all(&dir) {
                skip(test, &format!("cannot create {}: {error}", dir.display()));
                return None;
            }
            let mut server = PrivateRedis {
                port,
                dir,
                args,
                child: None,
            };
            match server.launch() {
                Ok(()) => Some(server),
                Err(reason) => {
                    skip(test, &reason);
                    None
                }
            }
        }

        /// The server's own directory (for certificates and its log).
        pub fn dir(&self) -> &std::path::Path {
            &self.dir
        }

        /// `redis://127.0.0.1:<port>/<db>`.
        pub fn url(&self, db: u8) -> String {
            format!("redis://127.0.0.1:{}/{db}", self.port)
        }

        /// Kills the server (SIGKILL) and starts it again on the same port: every
        /// client connection breaks.
        pub fn restart(&mut self) -> Result<(), String> {
            self.kill();
            self.launch()
        }

        /// Kills the server if it runs.
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        fn launch(&mut self) -> Result<(), String> {
            let log = self.dir.join("redis.log");
            let mut command = std::process::Command::new("redis-server");
            command
                .args(&self.args)
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(&log)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut child = command
                .spawn()
                .map_err(|e| format!("cannot start redis-server: {e}"))?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: String = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    return Err(format!(
                        "redis-server {:?} exited ({status}): {tail}",
                        self.args
                    ));
                }
                let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
                if std::net::TcpStream::connect_timeout(
                    &address,
                    std::time::Duration::from_millis(200),
                )
                .is_ok()
                {
                    self.child = Some(child);
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "redis-server {:?} did not listen within 10 s",
                        self.args
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    impl Drop for PrivateRedis {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// A TCP port on 127.0.0.1 that was free a moment ago.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .unwrap_or(0)
    }

    /// Certificates made by `openssl` for a TLS test server: a CA, a server
    /// certificate for `localhost` and `127.0.0.1`, and a client certificate, all
    /// PEM files in the server's directory.
    #[derive(Debug, Clone)]
    pub struct TestCertificates {
        /// The CA certificate (what `ssl_ca_certs` names).
        pub ca: std::path::PathBuf,
        /// The client certificate (`ssl_certfile`).
        pub client_cert: std::path::PathBuf,
        /// The client key (`ssl_keyfile`).
        pub client_key: std::path::PathBuf,
    }

    /// A private `redis-server` that speaks only TLS (`--port 0 --tls-port <free>`,
    /// client certificates required: `--tls-auth-clients yes`) with certificates generated by `openssl` now.
    /// Returns `None` after [`skip`] when `openssl` or `redis-server` is missing or
    /// the server was built without TLS.
    pub fn tls_redis_or_skip(test: &str) -> Option<(PrivateRedis, TestCertificates)> {
        let dir = std::env::temp_dir().join(format!(
            "celeriac-certs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let made = TlsCertificates::generate(&dir);
        let TlsCertificates {
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        } = match made {
            Ok(files) => files,
            Err(reason) => {
                let _ = std::fs::remove_dir_all(&dir);
                skip(test, &reason);
                return None;
            }
        };
        let port = free_port();
        let path = |p: &std::path::Path| p.display().to_string();
        let args = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&server_cert),
            "--tls-key-file".into(),
            path(&server_key),
            "--tls-ca-cert-file".into(),
            path(&ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ];
        let server = PrivateRedis::start_with_or_skip(test, port, args);
        let Some(mut server) = server else {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        };
        // The certificates live (and are removed) with the server's directory.
        let moved = |p: &std::path::Path| server.dir.join(p.file_name().unwrap_or_default());
        let files = TestCertificates {
            ca: moved(&ca),
            client_cert: moved(&client_cert),
            client_key: moved(&client_key),
        };
        for file in [&ca, &server_cert, &server_key, &client_cert, &client_key] {
            if let Err(error) = std::fs::copy(file, moved(file)) {
                server.kill();
                let _ = std::fs::remove_dir_all(&dir);
                skip(test, &format!("cannot copy {}: {error}", file.display()));
                return None;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Some((server, files))
    }

    /// PEM files made by `openssl` for a TLS test server: a CA, a server certificate
    /// for `localhost` and `127.0.0.1` signed by it, and a client certificate signed by
    /// it (P-256 keys, valid for two days).
    #[derive(Debug, Clone)]
    pub struct TlsCertificates {
        /// The CA certificate (what `ssl_ca_certs` names).
        pub ca: std::path::PathBuf,
        /// The server certificate.
        pub server_cert: std::path::PathBuf,
        /// The server's key.
        pub server_key: std::path::PathBuf,
        /// The client certificate (`ssl_certfile`).
        pub client_cert: std::path::PathBuf,
        /// The client's key (`ssl_keyfile`).
        pub client_key: std::path::PathBuf,
    }

    impl TlsCertificates {
        /// Makes them in `dir` with `openssl`, or says why not (`openssl` missing).
        pub fn generate(dir: &std::path::Path) -> Result<TlsCertificates, String> {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let openssl = |args: &[&str]| -> Result<(), String> {
                let output = std::process::Command::new("openssl")
                    .args(args)
                    .current_dir(dir)
                    .output()
                    .map_err(|e| format!("openssl is not usable ({e})"))?;
                if output.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "openssl {} failed: {}",
                        args.first().copied().unwrap_or_default(),
                        String::from_utf8_lossy(&output.stderr).trim()
                    ))
                }
            };
            let write = |name: &str, text: &str| {
                std::fs::write(dir.join(name), text)
                    .map_err(|e| format!("cannot write {name}: {e}"))
            };
            let ec = [
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ];
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=celeriac test CA",
            ]);
            openssl(&args)?;
            write(
                "server.ext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            )?;
            write(
                "client.ext",
                "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
            )?;
            for (name, subject) in [
                ("server", "/CN=localhost"),
                ("client", "/CN=celeriac test client"),
            ] {
                let (key, csr, crt, ext) = (
                    format!("{name}.key"),
                    format!("{name}.csr"),
                    format!("{name}.crt"),
                    format!("{name}.ext"),
                );
                let mut args = vec!["req"];
                args.extend(ec);
                args.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
                openssl(&args)?;
                openssl(&[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ])?;
            }
            Ok(TlsCertificates {
                ca: dir.join("ca.crt"),
                server_cert: dir.join("server.crt"),
                server_key: dir.join("server.key"),
                client_cert: dir.join("client.crt"),
                client_key: dir.join("client.key"),
            })
        }
    }
}
