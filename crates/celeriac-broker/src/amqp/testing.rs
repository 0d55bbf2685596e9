//! Test support for the RabbitMQ broker (features `amqp` + `testing`): finding a
//! RabbitMQ to test against, a [`BrokerHarness`], and closing connections from the
//! server side with `rabbitmqctl` for reconnect tests.
//!
//! [`PrivateRabbitMq`] starts a node of its own (own name, ports, directory) for
//! tests that restart, kill or reconfigure the broker, such as TLS
//! ([`tls_rabbitmq_or_skip`]) and fault injection; it never touches the shared node.
//!
//! The conformance tests use fresh queue names (a uuid each), so they share one
//! vhost; the harness declares its queues with `x-expires` (60 s), so RabbitMQ
//! deletes them (and their dead-letter queues) soon after the test, and deletes the
//! queues its handles know of when dropped. It never touches other queues or the
//! node's settings.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{dead_letter_queue, AmqpBroker, AmqpBrokerOptions};
use crate::testing::BrokerHarness;
use crate::Broker;

/// Whether a test must fail (not skip) when a service is missing
/// (`CELERIAC_REQUIRE_SERVICES=1`).
pub fn services_required() -> bool {
    std::env::var("CELERIAC_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The AMQP URL for service tests (`CELERIAC_TEST_AMQP_URL`, default
/// `amqp://guest:guest@127.0.0.1:5672//`) if a RabbitMQ answers there. Otherwise:
/// panics when `CELERIAC_REQUIRE_SERVICES=1` (CI), or prints why the test is skipped
/// and returns `None` (a developer machine without RabbitMQ).
pub fn amqp_url_or_skip(test: &str) -> Option<String> {
    let url = std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672//".to_string());
    let address = super::target::parse(&url, &mut AmqpBrokerOptions::default())
        .ok()
        .map(|t| format!("{}:{}", t.uri.authority.host, t.uri.authority.port));
    let answers = address.as_deref().is_some_and(|a| {
        std::net::ToSocketAddrs::to_socket_addrs(a)
            .ok()
            .and_then(|mut addresses| addresses.next())
            .is_some_and(|sa| {
                std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(1)).is_ok()
            })
    });
    if answers {
        return Some(url);
    }
    assert!(
        !services_required(),
        "{test}: RabbitMQ does not answer at {} and CELERIAC_REQUIRE_SERVICES=1",
        crate::redact(&url)
    );
    eprintln!(
        "skipped {test}: RabbitMQ does not answer at {} (set CELERIAC_TEST_AMQP_URL)",
        crate::redact(&url)
    );
    None
}

/// What a private node's start gave `test`: the value, or `None` after printing why
/// the test is skipped (a panic instead under `CELERIAC_REQUIRE_SERVICES=1`).
fn or_skip<T>(test: &str, started: Result<T, String>) -> Option<T> {
    match started {
        Ok(value) => Some(value),
        Err(reason) => {
            assert!(
                !services_required(),
                "{test}: {reason}, and CELERIAC_REQUIRE_SERVICES=1"
            );
            eprintln!("skipped {test}: {reason}");
            None
        }
    }
}

/// A harness over one vhost of a RabbitMQ: priority queues (`x-max-priority` 10)
/// that expire 60 s after their last use.
pub struct AmqpHarness {
    url: String,
    options: AmqpBrokerOptions,
    handles: Mutex<Vec<AmqpBroker>>,
}

impl AmqpHarness {
    /// A harness on `url` with priority queues that expire.
    pub fn new(url: &str) -> AmqpHarness {
        let options = AmqpBrokerOptions {
            max_priority: Some(10),
            queue_expires: Some(Duration::from_secs(60)),
            ..AmqpBrokerOptions::default()
        };
        AmqpHarness::with_options(url, options)
    }

    /// A harness on `url` with the given options.
    pub fn with_options(url: &str, options: AmqpBrokerOptions) -> AmqpHarness {
        AmqpHarness {
            url: url.to_string(),
            options,
            handles: Mutex::new(Vec::new()),
        }
    }

    /// A new concrete handle (panics if RabbitMQ does not answer: this is test
    /// support).
    pub async fn amqp_broker(&self) -> AmqpBroker {
        let broker = AmqpBroker::open_url(&self.url, self.options.clone())
            .await
            .expect("open the AMQP broker");
        self.handles.lock().push(broker.clone());
        broker
    }
}

impl Drop for AmqpHarness {
    fn drop(&mut self) {
        let mut queues = std::collections::BTreeSet::new();
        for handle in self.handles.lock().drain(..) {
            queues.extend(handle.inner.state.lock().known_queues.iter().cloned());
        }
        if queues.is_empty() {
            return;
        }
        let url = self.url.clone();
        // A runtime of its own: this may run after the test's runtime stopped.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let target = super::target::parse(&url, &mut AmqpBrokerOptions::default()).ok()?;
                let connection = target.connect(Default::default()).await.ok()?;
                for queue in queues {
                    for name in [dead_letter_queue(&queue), queue] {
                        // Each on a fresh channel: deleting a missing queue is fine,
                        // but an error would close the channel.
                        if let Ok(channel) = connection.create_channel().await {
                            let _ = channel
                                .queue_delete(name.as_str().into(), Default::default())
                                .await;
                        }
                    }
                }
                let _ = connection.close(200, "OK".into()).await;
                Some(())
            })
        });
        let _ = cleanup.join();
    }
}

#[async_trait]
impl BrokerHarness for AmqpHarness {
    async fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.amqp_broker().await)
    }

    async fn inject_raw(&self, queue: &str, payload: &[u8]) -> bool {
        self.amqp_broker()
            .await
            .publish_raw(queue, payload)
            .await
            .expect("publish a raw payload");
        true
    }
}

/// Closes, from the server side, every connection whose client-given name is
/// `connection_name` (`rabbitmqctl close_connection`), as a network failure or an
/// operator would; returns how many were closed. `Err` when `rabbitmqctl` cannot be
/// run or fails.
pub fn close_connections_named(connection_name: &str) -> Result<usize, String> {
    let listing = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .map_err(|e| format!("running rabbitmqctl: {e}"))?;
    if !listing.status.success() {
        return Err(format!(
            "rabbitmqctl list_connections failed: {}",
            String::from_utf8_lossy(&listing.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&listing.stdout);
    let needle = format!("\"{connection_name}\"");
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(&needle)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "celeriac reconnect test"])
            .output()
            .map_err(|e| format!("running rabbitmqctl: {e}"))?;
        if status.status.success() {
            closed += 1;
        }
    }
    Ok(closed)
}

/// Where the RabbitMQ scripts are: Debian's `/usr/lib/rabbitmq/bin` (the
/// `/usr/sbin` wrappers switch to the `rabbitmq` user and its home, hence its
/// Erlang cookie, when run by root), else the directory of `rabbitmq-server` on
/// `PATH` (the generic Unix package, Homebrew).
fn rabbitmq_scripts() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin");
    if debian.join("rabbitmq-server").is_file() {
        return Some(debian);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join("rabbitmq-server").is_file())
}

/// Fills `plugins` with links to the applications the `rabbit` application needs
/// (read from the `.app` files of the installation's plugins directory), so the
/// node's code path holds about 20 applications rather than the 70 of every bundled
/// plugin: loading RabbitMQ's modules, which it does at boot to find its boot steps,
/// is then faster (about 0.8 s). Does nothing when the installation looks different
/// (the node then uses the installation's directory).
fn link_needed_applications(scripts: &Path, plugins: &Path) {
    let Some(installed) = std::fs::canonicalize(scripts.join("rabbitmq-server"))
        .ok()
        .and_then(|script| Some(script.parent()?.parent()?.join("plugins")))
    else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&installed) else {
        return;
    };
    // Application name -> (directory, applications it needs).
    let mut applications = std::collections::HashMap::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some((name, _version)) = file_name.rsplit_once('-') else {
            continue;
        };
        let app_file = entry.path().join("ebin").join(format!("{name}.app"));
        let Ok(text) = std::fs::read_to_string(&app_file) else {
            continue;
        };
        let mut needs = Vec::new();
        for key in ["{applications,", "{included_applications,"] {
            let compact: String = text.split_whitespace().collect();
            if let Some(list) = compact
                .split_once(key)
                .and_then(|(_, rest)| rest.strip_prefix('['))
                .and_then(|rest| rest.split_once(']'))
                .map(|(list, _)| list.to_string())
            {
                needs.extend(
                    list.split(',')
                        .map(|a| a.trim_matches('\'').to_string())
                        .filter(|a| !a.is_empty()),
                );
            }
        }
        applications.insert(name.to_string(), (entry.path(), needs));
    }
    if !applications.contains_key("rabbit") {
        return;
    }
    let mut needed = std::collections::BTreeSet::new();
    let mut pending = vec!["rabbit".to_string(), "rabbitmq_prelaunch".to_string()];
    while let Some(name) = pending.pop() {
        if let Some((_, needs)) = applications.get(&name) {
            if needed.insert(name) {
                pending.extend(needs.iter().cloned());
            }
        }
    }
    if std::fs::create_dir_all(plugins).is_err() {
        return;
    }
    for name in needed {
        let (path, _) = &applications[&name];
        let linked = path
            .file_name()
            .map(|file_name| std::os::unix::fs::symlink(path, plugins.join(file_name)));
        if !matches!(linked, Some(Ok(()))) {
            let _ = std::fs::remove_dir_all(plugins);
            return;
        }
    }
}

/// Whether a live (not zombie) process is in process group `group` (Linux `/proc`).
fn group_alive(group: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        let Some((_, after)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // A leader that exited shows as a zombie while its other threads (the VM's
        // schedulers, which hold its sockets) are still being torn down.
        let live = fields.first().is_some_and(|state| *state != "Z")
            || std::fs::read_dir(entry.path().join("task")).is_ok_and(|tasks| tasks.count() > 1);
        live && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(group)
    })
}

static NEXT_NODE: AtomicU64 = AtomicU64::new(0);

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or(0)
}

fn answers(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
}

/// The TLS listener of a [`PrivateRabbitMq`]: PEM files of the CA that client
/// certificates must chain to, the server's certificate and its key.
#[derive(Debug, Clone)]
pub struct RabbitTls {
    /// `ssl_options.cacertfile`.
    pub ca: PathBuf,
    /// `ssl_options.certfile`.
    pub cert: PathBuf,
    /// `ssl_options.keyfile`.
    pub key: PathBuf,
    /// `fail_if_no_peer_cert`: refuse clients that present no certificate signed by
    /// `ca` (with `false` a client certificate is optional, but checked if sent).
    pub require_client_certificate: bool,
}

/// What a [`PrivateRabbitMq`] listens on besides plain AMQP.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PrivateRabbitMqOptions {
    /// A TLS listener (`amqps://`) with these certificates.
    pub tls: Option<RabbitTls>,
}

impl PrivateRabbitMqOptions {
    /// Plain AMQP only.
    pub fn plain() -> PrivateRabbitMqOptions {
        PrivateRabbitMqOptions::default()
    }

    /// Plain AMQP and a TLS listener.
    pub fn with_tls(tls: RabbitTls) -> PrivateRabbitMqOptions {
        PrivateRabbitMqOptions { tls: Some(tls) }
    }
}

/// A `rabbitmq-server` node a test owns, never the shared one: its own node name
/// (`celeriac-test-<pid>-<n>@localhost`), its own free ports on 127.0.0.1 (AMQP, the
/// optional TLS listener, the Erlang distribution port and a private `epmd`), and
/// its own temporary directory with its database, logs, config file, an empty
/// enabled-plugins file and its own Erlang cookie (`HOME` points there).
///
/// It can be stopped, killed (SIGKILL), paused (SIGSTOP) and started again on the
/// same ports and database, so durable queues survive a restart. Dropping it kills
/// its whole process group (the VM and its helpers) and its `epmd`, and removes the
/// directory: no orderly shutdown, which would add seconds to every test.
///
/// Startup takes 3 to 5 s on a loaded 2-core machine (7.5 s before two shortcuts:
/// the VM starts distributed under its node name, so RabbitMQ skips booting a second
/// VM to check `epmd`, and its plugins directory links only the applications
/// `rabbit` needs).
#[derive(Debug)]
pub struct PrivateRabbitMq {
    node: String,
    scripts: PathBuf,
    amqp_port: u16,
    tls_port: Option<u16>,
    dist_port: u16,
    epmd_port: u16,
    dir: tempfile::TempDir,
    /// The `rabbitmq-server` script, leader of a process group of its own.
    server: Option<std::process::Child>,
    epmd: Option<std::process::Child>,
    /// How long the last start took.
    startup: Duration,
}

impl PrivateRabbitMq {
    /// Starts a node and waits until it accepts connections. When that is not
    /// possible (`rabbitmq-server` is not installed, or it does not come up): panics
    /// with the reason under `CELERIAC_REQUIRE_SERVICES=1`, else prints why `test` is
    /// skipped and returns `None`.
    pub fn start(test: &str, options: PrivateRabbitMqOptions) -> Option<PrivateRabbitMq> {
        or_skip(test, PrivateRabbitMq::try_start(options))
    }

    /// Starts a node and waits until it accepts connections, or says why not.
    pub fn try_start(options: PrivateRabbitMqOptions) -> Result<PrivateRabbitMq, String> {
        PrivateRabbitMq::start_in(private_dir()?, options)
    }

    /// Makes certificates with `openssl` in a new node's directory and starts the
    /// node with a TLS listener using them (see [`tls_rabbitmq_or_skip`]).
    pub fn try_start_with_tls(
        require_client_certificate: bool,
    ) -> Result<(PrivateRabbitMq, TlsCertificates), String> {
        let dir = private_dir()?;
        let certificates = TlsCertificates::generate(&dir.path().join("certs"))?;
        let tls = RabbitTls {
            ca: certificates.ca.clone(),
            cert: certificates.server_cert.clone(),
            key: certificates.server_key.clone(),
            require_client_certificate,
        };
        let node = PrivateRabbitMq::start_in(dir, PrivateRabbitMqOptions::with_tls(tls))?;
        Ok((node, certificates))
    }

    fn start_in(
        dir: tempfile::TempDir,
        options: PrivateRabbitMqOptions,
    ) -> Result<PrivateRabbitMq, String> {
        let scripts = rabbitmq_scripts()
            .ok_or("rabbitmq-server is not installed (not on PATH nor in /usr/lib/rabbitmq/bin)")?;
        let node = format!(
            "celeriac-test-{}-{}@localhost",
            std::process::id(),
            NEXT_NODE.fetch_add(1, Ordering::Relaxed)
        );
        let mut rabbit = PrivateRabbitMq {
            node,
            scripts,
            amqp_port: free_port(),
            tls_port: options.tls.as_ref().map(|_| free_port()),
            dist_port: free_port(),
            epmd_port: free_port(),
            dir,
            server: None,
            epmd: None,
            startup: Duration::ZERO,
        };
        rabbit.write_config(&options)?;
        link_needed_applications(&rabbit.scripts, &rabbit.dir.path().join("plugins"));
        rabbit.launch()?;
        Ok(rabbit)
    }

    fn write_config(&self, options: &PrivateRabbitMqOptions) -> Result<(), String> {
        let write = |name: &str, text: String| {
            std::fs::write(self.dir.path().join(name), text)
                .map_err(|e| format!("cannot write {name}: {e}"))
        };
        let quoted = |path: &Path| format!("{:?}", path.display().to_string());
        let mut rabbit = vec![
            format!("{{tcp_listeners, [{{\"127.0.0.1\", {}}}]}}", self.amqp_port),
            // Quick, quiet: no console log, warnings in the file.
            "{log, [{console, [{enabled, false}]}, {file, [{level, warning}]}]}".to_string(),
        ];
        if let (Some(tls), Some(port)) = (&options.tls, self.tls_port) {
            rabbit.push(format!("{{ssl_listeners, [{{\"127.0.0.1\", {port}}}]}}"));
            rabbit.push(format!(
                "{{ssl_options, [{{cacertfile, {}}}, {{certfile, {}}}, {{keyfile, {}}}, \
                 {{verify, verify_peer}}, {{fail_if_no_peer_cert, {}}}]}}",
                quoted(&tls.ca),
                quoted(&tls.cert),
                quoted(&tls.key),
                tls.require_client_certificate
            ));
        } else {
            rabbit.push("{ssl_listeners, []}".to_string());
        }
        write(
            "rabbitmq.config",
            format!("[{{rabbit, [{}]}}].\n", rabbit.join(",\n  ")),
        )?;
        write("enabled_plugins", "[].\n".to_string())?;
        // Replaces /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
        write("rabbitmq-env.conf", String::new())
    }

    /// The environment of every RabbitMQ command run for this node.
    fn environment(&self, command: &mut std::process::Command) {
        let dir = self.dir.path();
        command
            .env("HOME", dir)
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.config"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            .current_dir(dir);
        if dir.join("plugins").is_dir() {
            command.env("RABBITMQ_PLUGINS_DIR", dir.join("plugins"));
        }
    }

    /// Starts `epmd` (when not running) and the node, and waits for its listeners.
    fn launch(&mut self) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let started = std::time::Instant::now();
        if self
            .epmd
            .as_mut()
            .is_none_or(|e| e.try_wait().ok().flatten().is_some())
        {
            let epmd = std::process::Command::new("epmd")
                .args([
                    "-port",
                    &self.epmd_port.to_string(),
                    "-address",
                    "127.0.0.1",
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot start epmd: {e}"))?;
            self.epmd = Some(epmd);
        }
        let log = std::fs::File::create(self.dir.path().join("server.out"))
            .map_err(|e| format!("cannot create the server log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot create the server log: {e}"))?;
        let mut command = std::process::Command::new(self.scripts.join("rabbitmq-server"));
        self.environment(&mut command);
        // The VM starts distributed, under the node's name, on its port: RabbitMQ then
        // skips its own distribution setup, which boots a second Erlang VM just to
        // make sure epmd runs (about a second). Distribution stays on loopback.
        let dist = self.dist_port;
        command.env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            format!(
                "-sname {} -start_epmd false -kernel inet_dist_listen_min {dist} \
                 -kernel inet_dist_listen_max {dist} -kernel inet_dist_use_interface {{127,0,0,1}}",
                self.node
            ),
        );
        command
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let server = command
            .spawn()
            .map_err(|e| format!("cannot start rabbitmq-server: {e}"))?;
        self.server = Some(server);
        let deadline = started + Duration::from_secs(90);
        loop {
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|s| s.try_wait().ok().flatten())
            {
                self.server = None;
                return Err(format!(
                    "rabbitmq-server {} exited ({status}) while starting: {}",
                    self.node,
                    self.log_tail()
                ));
            }
            if answers(self.amqp_port) && self.tls_port.is_none_or(answers) {
                self.startup = started.elapsed();
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "rabbitmq-server {} did not listen within 90 s: {}",
                    self.node,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the node's output and log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut text =
            std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default();
        let log = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.node));
        text.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(6)..].join(" | ")
    }

    /// The node's name (`celeriac-test-<pid>-<n>@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's directory (database, logs, config; a test may put files there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The plain AMQP port.
    pub fn port(&self) -> u16 {
        self.amqp_port
    }

    /// The TLS port, when started with a TLS listener.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// How long the last start took (from spawning to accepting connections).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// `amqp://guest:guest@127.0.0.1:<port>//`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}//", self.amqp_port)
    }

    /// `amqps://guest:guest@localhost:<tls port>//` (the host name the test
    /// certificates name), when started with a TLS listener; add `?ssl_…` options.
    pub fn amqps_url(&self) -> Option<String> {
        self.tls_port
            .map(|port| format!("amqps://guest:guest@localhost:{port}//"))
    }

    /// Whether the node's process runs (it may be paused).
    pub fn is_running(&mut self) -> bool {
        self.server
            .as_mut()
            .is_some_and(|s| matches!(s.try_wait(), Ok(None)))
    }

    /// Runs `rabbitmqctl -n <node> <args>` against this node; its standard output,
    /// or why it failed.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String, String> {
        let mut command = std::process::Command::new(self.scripts.join("rabbitmqctl"));
        self.environment(&mut command);
        let output = command
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "rabbitmqctl {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn signal_group(&self, signal: &str) {
        if let Some(server) = &self.server {
            // The script leads its own process group: the Erlang VM and its helpers
            // (erl_child_setup, inet_gethost, the disk monitor) are in it.
            let _ = std::process::Command::new("kill")
                .args([signal, "--", &format!("-{}", server.id())])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    /// Stops the node in order (SIGTERM to the script, which stops the VM as
    /// `rabbitmqctl stop` does), killing it if it has not stopped within 15 s. Its
    /// database stays for [`PrivateRabbitMq::start_again`].
    pub fn stop(&mut self) {
        let Some(pid) = self.server.as_ref().map(|s| s.id()) else {
            return;
        };
        self.resume();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Some(server) = self.server.as_mut() {
                if !matches!(server.try_wait(), Ok(None)) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Kills the node at once (SIGKILL to its whole process group), as a crash or
    /// an out-of-memory kill would. Its database stays for
    /// [`PrivateRabbitMq::start_again`].
    pub fn kill(&mut self) {
        self.signal_group("-KILL");
        if let Some(mut server) = self.server.take() {
            let group = server.id();
            let _ = server.kill();
            let _ = server.wait();
            // The VM is the script's child: wait until it is gone too, so its ports
            // are free (and not mistaken for the next start's).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while (group_alive(group) || answers(self.amqp_port))
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Freezes the node (SIGSTOP to its process group): connections stay open but
    /// nothing answers, as with a hung broker or a network partition.
    pub fn pause(&self) {
        self.signal_group("-STOP");
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self) {
        self.signal_group("-CONT");
    }

    /// Starts the node again after [`stop`](Self::stop) or [`kill`](Self::kill) on
    /// the same ports, name and database, and waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Err(format!("{} is still running", self.node));
        }
        self.launch()
    }

    /// Kills the node and starts it again ([`kill`](Self::kill) then
    /// [`start_again`](Self::start_again)): every client connection breaks.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.launch()
    }
}

impl Drop for PrivateRabbitMq {
    fn drop(&mut self) {
        // Killed, not stopped in order: its database goes with the directory, and an
        // orderly stop would add seconds to every test.
        self.kill();
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
    }
}

/// PEM files made by `openssl` for a TLS test broker (see
/// [`celeriac_redis::testing::TlsCertificates`], which makes them for the TLS test
/// Redis too).
pub use celeriac_redis::testing::TlsCertificates;

/// A [`PrivateRabbitMq`] with a TLS listener whose certificates `openssl` makes now
/// (in the node's directory, removed with it); with `require_client_certificate`
/// it refuses TLS clients without a certificate from the same CA
/// (`fail_if_no_peer_cert`). `None` after printing why `test` is skipped (`openssl`
/// or `rabbitmq-server` missing); panics instead under
/// `CELERIAC_REQUIRE_SERVICES=1`.
pub fn tls_rabbitmq_or_skip(
    test: &str,
    require_client_certificate: bool,
) -> Option<(PrivateRabbitMq, TlsCertificates)> {
    or_skip(
        test,
        PrivateRabbitMq::try_start_with_tls(require_client_certificate),
    )
}

/// A new temporary directory for a node.
fn private_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("celeriac-rabbitmq-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))
}
