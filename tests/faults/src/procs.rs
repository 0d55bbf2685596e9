//! Child processes the suite starts and hurts: workers and beat replicas (this binary
//! re-executed), private `redis-server`s. Signals other than SIGKILL go through the
//! `kill` command (the workspace forbids unsafe code).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process, SIGKILLed when dropped if it still runs.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Its process id.
    pub pid: u32,
}

impl Proc {
    /// Starts this binary with `args`; its stderr goes to `log`.
    pub fn spawn_self(name: &str, args: &[String], log: &Path) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("the faults binary's path")?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = Command::new(exe)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Proc {
            pid: child.id(),
            child,
        })
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`) with the `kill` command.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        send_signal(self.pid, signal)
    }

    /// SIGKILL, and reaps it.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to `limit`; SIGKILL if it is still there. Returns its
    /// exit status when it exited by itself.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let _ = self.signal("TERM");
        let status = self.wait_exit(limit);
        if status.is_none() {
            self.sigkill();
        }
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            self.sigkill();
        }
    }
}

/// `kill -<signal> <pid>`.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed ({status})");
    }
    Ok(())
}

/// A `redis-server` the suite owns: a free port on 127.0.0.1 and its own directory;
/// with `durable`, every write is fsynced before Redis answers
/// (`--appendonly yes --appendfsync always`), so a SIGKILL loses nothing it
/// acknowledged. Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    durable: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one in a new directory under `parent`.
    pub fn start(parent: &Path, durable: bool) -> anyhow::Result<RedisServer> {
        let port = celeriac_redis::testing::free_port();
        let dir = parent.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut server = RedisServer {
            port,
            dir,
            durable,
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (every connection breaks; a durable server keeps what it answered).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let persistence: &[&str] = if self.durable {
            &[
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ]
        } else {
            &["--appendonly", "no", "--save", ""]
        };
        let log = self.dir.join("redis.log");
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server (is it on PATH?)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "redis-server exited at start ({status}); see {}",
                    log.display()
                );
            }
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                // A durable server answers only once the append-only file is loaded;
                // PING through a real client below would need a runtime, so give
                // the load a moment (the file is small).
                std::thread::sleep(Duration::from_millis(50));
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "redis-server did not listen within 10 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
