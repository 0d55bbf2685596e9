//! The brokers a scenario runs on: the embedded SQLite file, a private Redis the
//! suite starts (never the shared one), and RabbitMQ: the machine's node (unique
//! queue names that expire by themselves), or, for scenarios that restart the
//! broker, a private node the suite starts ([`PrivateRabbitMq`]).

use std::fmt;
use std::path::PathBuf;

use anyhow::Context;
use celeriac_broker::amqp::testing::{PrivateRabbitMq, PrivateRabbitMqOptions};

use crate::procs::RedisServer;

/// A broker kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BrokerKind {
    /// `sqlite://` (embedded).
    Sqlite,
    /// `redis://` on a private `redis-server`.
    Redis,
    /// `amqp://` on the machine's RabbitMQ, or on a private node.
    Amqp,
}

impl BrokerKind {
    /// Every kind.
    pub const ALL: [BrokerKind; 3] = [BrokerKind::Sqlite, BrokerKind::Redis, BrokerKind::Amqp];

    /// `sqlite`, `redis` or `amqp`.
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Sqlite => "sqlite",
            BrokerKind::Redis => "redis",
            BrokerKind::Amqp => "amqp",
        }
    }

    /// The kind called `name`.
    pub fn parse(name: &str) -> anyhow::Result<BrokerKind> {
        BrokerKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .with_context(|| format!("unknown broker {name:?} (sqlite, redis, amqp)"))
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One scenario's broker, its scratch directory and, on Redis or a private
/// RabbitMQ, its server.
pub struct Env {
    /// The kind.
    pub kind: BrokerKind,
    /// Scratch space (execution logs, the SQLite file, Redis's directory, the
    /// processes' logs); kept after the run when `CELERIAC_FAULTS_KEEP=1`.
    dir: tempfile::TempDir,
    /// The private Redis, on Redis.
    pub redis: Option<RedisServer>,
    /// The private RabbitMQ node, on RabbitMQ when `private` was asked for.
    pub rabbit: Option<PrivateRabbitMq>,
    url: String,
}

impl Env {
    /// A fresh broker of `kind`, or `Ok(None)` with the reason printed when the
    /// service is missing and not required. With `durable` Redis fsyncs every write
    /// (the scenario may restart it). With `private` RabbitMQ is a node of the
    /// suite's own, which the scenario may restart or stall (its confirms already
    /// mean "on disk" for persistent messages on durable queues), rather than the
    /// machine's node.
    pub fn open(
        kind: BrokerKind,
        durable: bool,
        private: bool,
        test: &str,
    ) -> anyhow::Result<Option<Env>> {
        let mut dir = tempfile::Builder::new()
            .prefix("celeriac-faults-")
            .tempdir()
            .context("scratch directory")?;
        if std::env::var("CELERIAC_FAULTS_KEEP").is_ok_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!("    scratch directory (kept): {}", dir.path().display());
        }
        let mut rabbit = None;
        let (url, redis) = match kind {
            BrokerKind::Sqlite => (
                format!("sqlite://{}", dir.path().join("broker.db").display()),
                None,
            ),
            BrokerKind::Redis => {
                let server = match RedisServer::start(dir.path(), durable) {
                    Ok(server) => server,
                    Err(error) => {
                        celeriac_redis::testing::skip(test, &format!("{error:#}"));
                        return Ok(None);
                    }
                };
                (server.url(), Some(server))
            }
            BrokerKind::Amqp if private => {
                let Some(node) = PrivateRabbitMq::start(test, PrivateRabbitMqOptions::plain())
                else {
                    return Ok(None);
                };
                eprintln!(
                    "    private RabbitMQ {} on port {} (up in {:.1} s)",
                    node.node(),
                    node.port(),
                    node.startup_time().as_secs_f64()
                );
                let url = node.url();
                rabbit = Some(node);
                (url, None)
            }
            BrokerKind::Amqp => {
                let Some(url) = celeriac_broker::amqp::testing::amqp_url_or_skip(test) else {
                    return Ok(None);
                };
                // Queues made by the suite go away by themselves a minute after use.
                let separator = if url.contains('?') { '&' } else { '?' };
                (format!("{url}{separator}queue_expires=60000"), None)
            }
        };
        Ok(Some(Env {
            kind,
            dir,
            redis,
            rabbit,
            url,
        }))
    }

    /// The broker URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A file in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
