//! The Redis broker against kombu itself: Python kombu's visibility-timeout recovery
//! (`QoS.restore_visible`, what every Python Celery worker runs) never takes a
//! message a live celeriac consumer holds, and recovers one whose celeriac holder
//! died when no celeriac process is left to do it, after which celeriac's own
//! bookkeeping settles without a duplicate.
//!
//! Needs Redis and a Python with kombu: `$CELERIAC_PYTHON`, else the repository's
//! `.venv/bin/python` (`bash scripts/python-env.sh`). Skipped when either is missing
//! (Redis is required when `CELERIAC_REQUIRE_SERVICES=1`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use celeriac_broker::redis::testing::RedisHarness;
use celeriac_broker::{Broker, FetchParams, Publish};
use celeriac_core::TaskMessage;
use redis::AsyncCommands;
use tokio::time::Instant;

/// Runs kombu's `restore_visible` once (no throttle) with `visibility_timeout`.
const RESTORE_VISIBLE: &str = r#"
import sys
from kombu import Connection
url, prefix, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
options = {"visibility_timeout": timeout, "global_keyprefix": prefix}
with Connection(url, transport_options=options) as conn:
    conn.default_channel.qos.restore_visible(num=1000, interval=1)
"#;

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("CELERIAC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    let has_kombu = Command::new(&python)
        .args(["-c", "import kombu"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_kombu {
        eprintln!(
            "skipped: no Python with kombu at {} (set CELERIAC_PYTHON or run scripts/python-env.sh)",
            python.display()
        );
    }
    has_kombu.then_some(python)
}

struct Kombu {
    python: PathBuf,
    url: String,
    prefix: String,
}

impl Kombu {
    /// kombu's visibility-timeout scan, as a Python worker runs it.
    async fn restore_visible(&self, timeout: Duration) {
        let mut command = tokio::process::Command::new(&self.python);
        command
            .arg("-c")
            .arg(RESTORE_VISIBLE)
            .arg(&self.url)
            .arg(&self.prefix)
            .arg(timeout.as_secs_f64().to_string());
        let out = command.output().await.expect("run Python");
        assert!(
            out.status.success(),
            "kombu failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn setup(test: &str) -> Option<(RedisHarness, Kombu)> {
    let url = celeriac_redis::testing::redis_url_or_skip(test)?;
    let python = python()?;
    let harness = RedisHarness::new(&url);
    let kombu = Kombu {
        python,
        url: url.split('?').next().unwrap_or(&url).to_string(),
        prefix: harness.prefix().to_string(),
    };
    Some((harness, kombu))
}

fn publish(queue: &str, id: &str) -> Publish {
    Publish {
        queue: queue.to_string(),
        envelope: TaskMessage::new("tasks.long", id, vec![], Default::default()).encode(),
        not_before: None,
    }
}

fn params(queue: &str, lease: Duration) -> FetchParams {
    FetchParams {
        queues: vec![queue.to_string()],
        max: 1,
        wait: Duration::from_secs(2),
        consumer: "kombu-test".into(),
        lease,
    }
}

#[tokio::test]
async fn kombus_scan_never_takes_a_message_a_live_celeriac_consumer_renews() {
    let Some((h, kombu)) = setup("kombus_scan_never_takes_a_renewed_message") else {
        return;
    };
    let broker = h.redis_broker().await;
    let mut conn = h.connection().await;
    let list = h.keys().queue("kq", 0);
    broker
        .publish(vec![publish("kq", "long")])
        .await
        .expect("publish");
    let lease = Duration::from_millis(900);
    let held = broker
        .fetch(&params("kq", lease))
        .await
        .expect("fetch")
        .remove(0);

    // A renewer every 150 ms, as the worker's (a third of the lease or faster).
    let renewer = {
        let broker = broker.clone();
        let tag = held.tag.clone();
        tokio::spawn(async move {
            loop {
                broker
                    .renew_leases(std::slice::from_ref(&tag), lease)
                    .await
                    .expect("renew");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    // Python workers with a visibility timeout of 0.6 s scan for 3 s.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        kombu.restore_visible(Duration::from_millis(600)).await;
        let waiting: usize = conn.llen(&list).await.expect("LLEN");
        assert_eq!(
            waiting, 0,
            "kombu restored a message celeriac holds and renews"
        );
    }
    renewer.abort();
    broker.ack(&[held.tag]).await.expect("ack");
    let unacked: usize = conn.hlen(&h.keys().unacked).await.expect("HLEN");
    assert_eq!(unacked, 0);
}

#[tokio::test]
async fn kombu_recovers_a_dead_celeriac_consumers_message_without_a_duplicate() {
    let Some((h, kombu)) = setup("kombu_recovers_a_dead_celeriac_consumers_message") else {
        return;
    };
    let keys = h.keys();
    let mut conn = h.connection().await;
    let dead = h.redis_broker().await;
    dead.publish(vec![publish("kq", "orphan")])
        .await
        .expect("publish");
    let stale = dead
        .fetch(&params("kq", Duration::from_millis(200)))
        .await
        .expect("fetch")
        .remove(0);
    // The consumer dies; no celeriac process restores; a Python worker with a 1 s
    // visibility timeout does, as kombu always did.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    kombu.restore_visible(Duration::from_secs(1)).await;
    let restored: Vec<String> = conn
        .lrange(keys.queue("kq", 0), 0, -1)
        .await
        .expect("LRANGE");
    assert_eq!(restored.len(), 1, "kombu put the message back");
    let envelope: serde_json::Value = serde_json::from_str(&restored[0]).expect("JSON");
    assert_eq!(envelope["headers"]["redelivered"], true);
    assert_eq!(envelope["properties"]["delivery_info"]["redelivered"], true);

    // The dead consumer's tag is stale now; celeriac's restore only tidies up.
    dead.ack(std::slice::from_ref(&stale.tag))
        .await
        .expect("stale ack");
    let rescuer = h.redis_broker().await;
    assert_eq!(rescuer.restore_expired().await.expect("restore"), 0);
    let leases: usize = conn.zcard(&keys.leases).await.expect("ZCARD");
    assert_eq!(leases, 0);
    let waiting: usize = conn.llen(keys.queue("kq", 0)).await.expect("LLEN");
    assert_eq!(waiting, 1, "still exactly one copy");

    let again = rescuer
        .fetch(&params("kq", Duration::from_secs(30)))
        .await
        .expect("fetch");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].envelope.task_id_hint(), Some("orphan"));
    assert_eq!(again[0].delivery_count, 2);
    rescuer.ack(&[again[0].tag.clone()]).await.expect("ack");
    let left: usize = conn.hlen(&keys.unacked).await.expect("HLEN");
    assert_eq!(left, 0, "unacked is empty");
    let leases: usize = conn.zcard(&keys.leases).await.expect("ZCARD");
    assert_eq!(leases, 0, "no lease is left");
}
