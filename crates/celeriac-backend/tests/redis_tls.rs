//! The Redis result backend over `rediss://` (kombu's `ssl_*` URL options) against a
//! private TLS-only `redis-server` whose certificates `openssl` makes at test time:
//! store, get, wait (pub/sub over TLS) and saved groups. Skipped with the reason
//! when `openssl` or a TLS-capable `redis-server` is missing (failed with
//! `CELERIAC_REQUIRE_SERVICES=1`).
#![cfg(feature = "redis")]

use std::time::Duration;

use celeriac_backend::redis::RedisBackend;
use celeriac_backend::{ResultBackend, SavedGroup};
use celeriac_core::{TaskMeta, TaskState};
use celeriac_redis::testing::tls_redis_or_skip;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_over_rediss() {
    let Some((server, certs)) = tls_redis_or_skip("results_over_rediss") else {
        return;
    };
    let url = format!(
        "rediss://localhost:{}/3?ssl_cert_reqs=required&ssl_ca_certs={}&ssl_certfile={}&ssl_keyfile={}",
        server.port,
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let writer = RedisBackend::open_url(&url).await.expect("open over TLS");
    let reader = RedisBackend::open_url(&url).await.expect("open over TLS");

    let waiting = {
        let reader = reader.clone();
        tokio::spawn(async move { reader.wait("tls-1", Duration::from_secs(20)).await })
    };
    let meta = TaskMeta::new("tls-1", TaskState::Success, json!({"sum": 3}));
    writer
        .store(&meta, Some(Duration::from_secs(60)))
        .await
        .expect("store over TLS");
    let got = reader.get("tls-1").await.expect("get over TLS");
    assert_eq!(got.map(|m| m.result), Some(json!({"sum": 3})));
    let waited = waiting
        .await
        .expect("the waiter ran")
        .expect("wait over TLS")
        .expect("ready within the timeout");
    assert_eq!(waited.status, TaskState::Success);

    let group = SavedGroup::of_tasks("tls-group", ["tls-1", "tls-2"]);
    writer
        .save_group(&group, Some(Duration::from_secs(60)))
        .await
        .expect("save_group over TLS");
    assert_eq!(
        reader.restore_group("tls-group").await.expect("restore"),
        Some(group)
    );

    // Without the CA the server is not trusted.
    let untrusted = url.replace(&format!("ssl_ca_certs={}&", certs.ca.display()), "");
    assert!(
        RedisBackend::open_url(&untrusted).await.is_err(),
        "an untrusted certificate must not connect"
    );
}
