//! Test support for the RabbitMQ broker (features `amqp` + `testing`): finding a
//! RabbitMQ to test against, a [`BrokerHarness`], and closing connections from the
//! server side with `rabbitmqctl` for reconnect tests.
//!
//! The conformance tests use fresh queue names (a uuid each), so they share one
//! vhost; the harness declares its queues with `x-expires` (60 s), so RabbitMQ
//! deletes them (and their dead-letter queues) soon after the test, and deletes the
//! queues its handles know of when dropped. It never touches other queues or the
//! node's settings.

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
                let connection = lapin::Connection::connect(&lapin_url(&url)?, Default::default())
                    .await
                    .ok()?;
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

/// `url` as lapin's own URL syntax writes it (vhost percent-encoded).
fn lapin_url(url: &str) -> Option<String> {
    let target = super::target::parse(url, &mut AmqpBrokerOptions::default()).ok()?;
    let uri = target.uri;
    let vhost: String = uri
        .vhost
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02x}"),
        })
        .collect();
    Some(format!(
        "{}://{}:{}@{}:{}/{}",
        uri.scheme,
        uri.authority.userinfo.username,
        uri.authority.userinfo.password,
        uri.authority.host,
        uri.authority.port,
        vhost
    ))
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
