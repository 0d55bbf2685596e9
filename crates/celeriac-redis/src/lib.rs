//! Redis plumbing shared by celeriac's Redis broker and Redis result backend.
//!
//! # Layout
//!
//! - [`RedisTarget`]: a parsed Redis URL as Celery/kombu accept them —
//!   `redis://[user:pass@]host[:port][/db]`, `rediss://` (TLS), and kombu's
//!   `redis+socket:///path/to/socket?virtual_host=N` (also `unix://`), plus the
//!   `global_keyprefix` query parameter — and the `redis::Client` for it.
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
}

impl RedisTarget {
    /// Parses `redis://`, `rediss://`, `redis+socket://` and `unix://` URLs.
    /// `?global_keyprefix=P` sets the key prefix; `?virtual_host=N` (socket URLs) or
    /// the path (`/N`, TCP URLs) selects the database.
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
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
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
        Ok(RedisTarget {
            client_url,
            db,
            global_keyprefix: prefix,
            display,
        })
    }

    /// A client for this target (connections are opened lazily by the caller).
    pub fn client(&self) -> Result<redis::Client, RedisError> {
        Ok(redis::Client::open(self.client_url.as_str())?)
    }

    /// `key` with the global key prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{}", self.global_keyprefix, key)
    }
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
}
